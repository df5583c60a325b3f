"""The demo's sandboxed models: prepared in the background, registered when ready.

Preparing an environment installs the package's requirements (scikit-learn; onnxruntime,
tokenizers and the MiniLM weights: a few hundred MB) once, outside the sandbox. So that
``make run`` answers within seconds on a fresh machine, the demo starts the broker first and
prepares these packages on a background thread, printing pip's progress; each model is
registered (and callable) as soon as its environment is ready. Later runs find the
environments prepared and register the models at once.

``smollm2-chat`` (SmolLM2 on llama.cpp, in the sandbox) needs the llama-cpp-python wheel that
``examples/llm/build.sh`` builds into the wheel cache (PyPI has only a 10+ minute source build).
The demo's chat model runs that build in the background (``broker.demo.chat_prepare``), so this
package comes last and waits for that build to settle (``wheels``) instead of starting a second
one; it is then prepared from the cache, with PyPI for its other requirements, and skipped if
the build made no wheel.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.config import Config
from broker.demo.llm_env import llama_wheels
from broker.errors import AlreadyExists, BrokerError
from broker.packages.environment import Environments, PrepareOptions
from broker.packages.errors import PackageNotPrepared
from broker.packages.store import PackageStore
from broker.registry.model import FieldSpec, ModelStatus, ModelVersion, Runtime
from broker.registry.store import RegistryStore
from broker.runtimes.sandbox.probe import sandbox_support
from broker.runtimes.sandbox.runtime import sandboxed_prepare_hook

MODELS_DIR = Path(__file__).resolve().parents[2] / "examples" / "models"


@dataclass(frozen=True, slots=True)
class DemoPackage:
    """One example package and how the demo describes it to buyers."""

    folder: str
    name: str
    description: str
    fields: tuple[FieldSpec, ...]
    llama_wheel: bool = False  # installs llama-cpp-python from the local wheel cache


PACKAGES = (
    DemoPackage(
        "iris-sklearn",
        "iris-sandboxed",
        "Iris classifier run inside the broker's network-less sandbox. "
        'Payload: {"flowers": [[sepal_length, sepal_width, petal_length, petal_width]]}',
        (FieldSpec(path="/flowers", type="array"),),
    ),
    DemoPackage(
        "minilm-embed",
        "minilm-embed",
        "Sentence similarity (all-MiniLM-L6-v2) in the sandbox; free text may carry personal "
        'data, which stays inside the broker. Payload: {"query": "...", "documents": ["..."]}',
        (
            FieldSpec(path="/query", type="string", labels=("restricted",)),
            FieldSpec(path="/documents", type="array", labels=("restricted",)),
        ),
    ),
    DemoPackage(
        "smollm2-chat",
        "smollm2-sandboxed",
        "Chat (SmolLM2-135M-Instruct on llama.cpp) inside the broker's sandbox, so restricted "
        "text can go to an LLM. Payload: an OpenAI chat request; answer in choices[0].message",
        (FieldSpec(path="/messages/*/content", type="string", labels=("text.chat",)),),
        llama_wheel=True,
    ),
)

WheelSource = Callable[[], Path | None]
"""Blocks until the llama-cpp-python wheel is built (or will not be); returns its folder."""


def prepare_in_background(
    config: Config,
    registry: RegistryStore,
    vendor: str,
    say: Callable[[str], None],
    *,
    wheels: WheelSource = llama_wheels,
    packages: tuple[DemoPackage, ...] = PACKAGES,
) -> threading.Thread | None:
    """Start preparing and registering the sandboxed demo models; None if no sandbox here."""
    missing = sandbox_support()
    if missing:
        say(f"sandboxed demo models skipped, no sandbox here: {'; '.join(missing)}")
        return None
    thread = threading.Thread(
        target=_prepare_all,
        args=(config, registry, vendor, say),
        kwargs={"wheels": wheels, "packages": packages},
        name="demo-prepare",
        daemon=True,
    )
    thread.start()
    return thread


def _prepare_all(
    config: Config,
    registry: RegistryStore,
    vendor: str,
    say: Callable[[str], None],
    *,
    wheels: WheelSource,
    packages: tuple[DemoPackage, ...],
) -> None:
    store = PackageStore(config.data_dir)
    envs = Environments(config.data_dir / "envs")
    for demo in packages:
        options = PrepareOptions()
        if demo.llama_wheel:
            if llama_wheels() is None:
                say(f"sandboxed {demo.folder} waits for the llama-cpp-python wheel being built")
            found = wheels()
            if found is None:
                say(f"sandboxed {demo.folder} skipped: no llama-cpp-python wheel was built")
                continue
            options = PrepareOptions(find_links=(found,))
        try:
            package = store.add(MODELS_DIR / demo.folder)
            try:
                envs.find(package)
            except PackageNotPrepared:
                say(f"preparing {demo.folder} (first run only; progress below)")
            envs.prepare(
                package,
                run_hook=sandboxed_prepare_hook(),
                options=options,
                progress=_progress(demo),
            )
            model = ModelVersion(
                vendor=vendor,
                name=demo.name,
                version=package.manifest.version,
                runtime=Runtime.SANDBOX,
                status=ModelStatus.LISTED,
                description=demo.description,
                fields=demo.fields,
                package_digest=package.digest,
            )
            # Registered by an earlier run: same package, same digest, nothing to change.
            with contextlib.suppress(AlreadyExists):
                registry.register(model)
            say(f"sandboxed model {model.ref} is ready")
        except BrokerError as exc:
            say(f"could not prepare {demo.folder}: {exc.message}")


def _progress(demo: DemoPackage) -> Callable[[str], None]:
    def show(line: str) -> None:
        print(f"[demo:{demo.folder}] {line}", file=sys.stderr, flush=True)

    return show
