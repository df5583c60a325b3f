"""Per-stage CPU accounting for ``python -m bench --profile``: hooks installed by the profiler only.

The broker's code carries no timing of its own. For the length of a profile, ``installed``
replaces each function named in ``HOOKS`` (a class's method or a module's global) with a thin
wrapper that reads two clocks before and after the call, and puts the original back afterwards:

- the **thread** CPU clock (``CLOCK_THREAD_CPUTIME_ID``): the work done by the thread that runs
  the stage, which is the call's own thread for every stage here;
- the **process** CPU clock (``CLOCK_PROCESS_CPUTIME_ID``): that plus whatever other threads did
  meanwhile on the call's behalf (the audit writer's commit while ``record_intent`` waits for it,
  grpc's threads during the outbound call). The profile sends one call at a time, so that other
  work is the call's; a background thread that happens to run (the checkpointer) lands in some
  stage, which is why the profile reports medians over many calls.

Times are **exclusive**: a hooked function called inside another hooked one (``build_request``
inside the OIP runtime's ``invoke``) is counted in its own row and subtracted from its caller's,
wrapper and all, so the rows add up to the hooked part of the call and the wrappers' own cost
(a few clock reads each; reading the process clock sums every thread's time in the kernel)
lands in "outside the stages", not in the caller's row. A row is ``(stage, part)``; a hook whose
stage is ``None`` belongs to the stage of the hook that called it (``canonical_json`` is part of
"audit intent" or "audit outcome", depending on who called it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Row = tuple[str, str]  # (stage, part)
Chooser = Callable[[tuple[Any, ...], dict[str, Any]], Row]

#: The stages in call order, as the profile table lists them.
STAGES = (
    "authenticate",
    "parse request",
    "resolve",
    "classify",
    "decide",
    "enforce",
    "audit intent",
    "dispatch",
    "answer path",
    "restore",
    "audit outcome",
    "invoker glue",
    "response build",
)


def _by_direction(index: int, request: Row, response: Row) -> Chooser:
    """Pick the row by a ``direction`` argument ("request" or "response")."""

    def choose(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Row:
        direction = kwargs["direction"] if "direction" in kwargs else args[index]
        return request if direction == "request" else response

    return choose


@dataclass(frozen=True)
class Hook:
    """Where a stage's function lives (``module:Class.attr`` or ``module:attr``) and its row."""

    target: str
    row: Row | Chooser | None  # None: the calling hook's stage, part ``part``
    part: str = ""


HOOKS: tuple[Hook, ...] = (
    Hook("broker.auth.tokens:TokenVerifier.authenticate", ("authenticate", "JWT verify")),
    # The servicer's own time, net of the hooks below it, is building the response message.
    Hook("broker.server.broker_service:BrokerServicer.Invoke", ("response build", "protobuf")),
    Hook("broker.server.broker_service:BrokerServicer._call_request", ("parse request", "JSON")),
    Hook("broker.calls.invoke:Invoker.invoke", ("invoker glue", "ids, limiter, chat, retain")),
    Hook("broker.calls.invoke:Invoker._resolve", ("resolve", "registry cache")),
    Hook("broker.calls.decide:Decider.classify_request", ("classify", "fields and detectors")),
    Hook(
        "broker.calls.decide:Decider.decide",
        _by_direction(1, ("decide", "plan (cache)"), ("answer path", "decide")),
    ),
    Hook(
        "broker.enforce.enforcer:Enforcer.apply",
        _by_direction(5, ("enforce", "actions"), ("answer path", "enforce")),
    ),
    Hook("broker.enforce.vault:TokenVault.seal", ("enforce", "vault seal")),
    Hook("broker.calls.audited:CallRecord.record_intent", ("audit intent", "append")),
    Hook("broker.runtimes.oip:OpenInferenceRuntime.invoke", ("dispatch", "gRPC call")),
    # build_request before the request was written as bytes: the profile of an older tree.
    Hook(
        "broker.runtimes.oip:encode_request|build_request",
        ("dispatch", "tensor mapping, request"),
    ),
    Hook("broker.runtimes.oip:build_answer", ("dispatch", "tensor mapping, answer")),
    Hook("broker.calls.invoke:classify", ("answer path", "classify")),
    Hook("broker.enforce.restore:Restorer.restore", ("restore", "tokens and ciphertexts")),
    Hook("broker.calls.audited:CallRecord.record_success", ("audit outcome", "append")),
    Hook("broker.audit.entry:canonical_json", None, "entry canonical JSON"),
)


class StageRecorder:
    """Collects exclusive thread and process CPU nanoseconds per row until ``take``."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._totals: dict[Row, list[int]] = {}

    def take(self) -> dict[Row, tuple[int, int]]:
        """The (thread ns, process ns) of every row since the last ``take``; starts afresh."""
        with self._lock:
            totals, self._totals = self._totals, {}
        return {row: (t, p) for row, (t, p) in totals.items()}

    def wrap(self, fn: Callable[..., Any], hook: Hook) -> Callable[..., Any]:
        """``fn`` timed into the hook's row (exclusive of hooked calls inside it)."""
        recorder = self
        thread_ns, process_ns = time.thread_time_ns, time.process_time_ns

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            # Outer reads span the whole wrapper and are what the caller's row loses; inner
            # reads span the function and are what this row gains. The wrapper's own work
            # (these reads included) thus counts in no row: it lands in "outside the stages".
            outer_t, outer_p = thread_ns(), process_ns()
            stack: list[list[Any]] = recorder._stack()
            if hook.row is None:
                row: Row = (stack[-1][0][0] if stack else "other", hook.part)
            elif callable(hook.row):
                row = hook.row(args, kwargs)
            else:
                row = hook.row
            frame: list[Any] = [row, 0, 0]  # row, thread ns and process ns of hooked children
            stack.append(frame)
            t0, p0 = thread_ns(), process_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dp = thread_ns() - t0, process_ns() - p0
                stack.pop()
                recorder._add(row, dt - frame[1], dp - frame[2])
                if stack:
                    stack[-1][1] += thread_ns() - outer_t
                    stack[-1][2] += process_ns() - outer_p

        return timed

    def _stack(self) -> list[list[Any]]:
        stack: list[list[Any]] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _add(self, row: Row, thread: int, process: int) -> None:
        with self._lock:
            slot = self._totals.setdefault(row, [0, 0])
            slot[0] += thread
            slot[1] += process


def _locate(target: str) -> tuple[Any, str]:
    """The owner and attribute a hook names; the first of ``a|b`` alternatives that exists."""
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, attrs = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    for attr in attrs.split("|"):
        if hasattr(owner, attr):
            return owner, attr
    # A renamed stage function must not vanish from the profile without a word.
    raise RuntimeError(f"profile hook {target} names nothing; update bench/profile_stages.py")


@contextlib.contextmanager
def installed(recorder: StageRecorder, hooks: tuple[Hook, ...] = HOOKS) -> Iterator[None]:
    """Wrap every hooked function for the duration of the block, then restore the originals.

    Install before the broker is built: it keeps bound methods (the interceptor keeps
    ``TokenVerifier.authenticate``), which must already be the wrapped ones.
    """
    originals: list[tuple[Any, str, Any]] = []
    try:
        for hook in hooks:
            owner, attr = _locate(hook.target)
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            originals.append((owner, attr, original))
            setattr(owner, attr, recorder.wrap(original, hook))
        yield
    finally:
        for owner, attr, original in reversed(originals):
            setattr(owner, attr, original)
