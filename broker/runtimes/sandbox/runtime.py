"""``SandboxRuntime``: the broker's ``Runtime`` for ``Runtime.SANDBOX`` models.

model.package_digest -> verified package -> (package, tenant) pool -> worker.call (or, for
``InvokeStream``, worker.stream: see ``chat_stream``). Built only where the sandbox works: the
constructor runs ``sandbox_support()`` and raises :class:`SandboxUnavailable` with the missing
features, so a broker that cannot sandbox serves no sandbox model (FAILED_PRECONDITION) and
never runs a package bare.

The tenant decides which pool, so it must be the authenticated caller's: ``invoke`` takes it
as ``tenant=``; without it, it reads the ``tenant`` the server's boundary interceptor bound in
structlog's context for this call, and refuses the call when neither is there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from broker.errors import FailedPrecondition, Internal
from broker.packages.environment import Environments, HookRunner
from broker.packages.store import PackageStore, StoredPackage
from broker.registry.model import ModelVersion
from broker.registry.model import Runtime as RuntimeKind
from broker.runtimes.base import Canceller
from broker.runtimes.sandbox.chat_stream import AnswerAsStream, SandboxChatStream
from broker.runtimes.sandbox.errors import SandboxUnavailable
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.pool import (
    LauncherFactory,
    PoolSettings,
    ViolationHook,
    WorkerPools,
)
from broker.runtimes.sandbox.probe import sandbox_support
from sandbox.protocol import WorkerLimits

PREPARE_TIMEOUT = 1800.0
PREPARE_FRAME_BYTES = 512 * 1024 * 1024


class SandboxRuntime:
    """Runs sandbox models in per-tenant worker pools; thread-safe, shared by all calls."""

    def __init__(
        self,
        store: PackageStore,
        environments: Environments,
        *,
        settings: PoolSettings | None = None,
        launcher_factory: LauncherFactory | None = None,
        support: Callable[[], list[str]] = sandbox_support,
        on_violation: ViolationHook | None = None,
    ) -> None:
        missing = support()
        if missing:
            raise SandboxUnavailable(missing)
        self.pools = WorkerPools(
            store,
            environments,
            settings=settings,
            launcher_factory=launcher_factory,
            on_violation=on_violation,
        )

    def invoke(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str,
    ) -> dict[str, Any]:
        """Call ``model``'s package with ``payload`` on a worker that serves ``tenant`` only."""
        return self.pools.call(
            _package_digest(model, tenant),
            tenant,
            payload,
            timeout=timeout,
            model=model.ref,
            on_cancel=on_cancel,
        )

    def stream(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str,
    ) -> SandboxChatStream | AnswerAsStream:
        """Run a chat call in the sandbox and deliver its answer chunk by chunk.

        The package gets the payload with ``"stream": true`` (``stream_options`` removed) and
        streams if it can; a whole completion comes back as one chunk. See
        ``broker.runtimes.sandbox.chat_stream``. Errors before the first chunk raise here;
        ``timeout`` covers the whole stream.
        """
        request = {k: v for k, v in payload.items() if k != "stream_options"}
        request["stream"] = True
        context = contextlib.ExitStack()
        chunks = context.enter_context(
            self.pools.streaming(
                _package_digest(model, tenant),
                tenant,
                request,
                timeout=timeout,
                model=model.ref,
                on_cancel=on_cancel,
            )
        )
        if chunks.answer is not None:
            context.close()  # the package answered in one piece: its worker is free again
            return AnswerAsStream(chunks.answer)
        return SandboxChatStream(chunks, context)

    def close(self) -> None:
        """Kill every worker; later calls fail with ``Unavailable``."""
        self.pools.close()


def _package_digest(model: ModelVersion, tenant: str) -> str:
    """The package to run for ``model``, once the call is known to be a sandbox call."""
    if model.runtime is not RuntimeKind.SANDBOX:
        raise Internal(f"model {model.ref} is not a sandbox model")
    if not model.package_digest:
        raise FailedPrecondition(f"model {model.ref} names no package (package_digest)")
    if not tenant:
        raise Internal("a sandbox call needs the caller's tenant", log_reason="no tenant")
    return model.package_digest


def sandboxed_prepare_hook(launcher_factory: LauncherFactory | None = None) -> HookRunner:
    """A hook runner for ``Environments.prepare``: the vendor's prepare step runs sandboxed too.

    It gets the manifest's memory, ten minutes of CPU, a 512 MiB answer cap (its artefacts come
    back base64-encoded in the answer) and the staging environment's directories, read-only.
    """
    make = launcher_factory or (lambda dirs: SandboxLauncher(env_dirs=dirs))

    def run(package: StoredPackage, mounts: tuple[Any, ...]) -> dict[str, Any]:
        limits = WorkerLimits(
            memory_bytes=max(package.manifest.resources.memory_mb, 1024) * 1024 * 1024,
            cpu_seconds=600,
            max_frame_bytes=PREPARE_FRAME_BYTES,
        )
        with make(tuple(mounts)).start(
            package.path, limits=limits, tenant="prepare", entry_point=package.manifest.prepare
        ) as worker:
            return worker.call({}, timeout=PREPARE_TIMEOUT)

    return run
