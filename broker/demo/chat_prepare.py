"""The demo's chat model, prepared in the background: build, start, register, announce.

On a new machine the chat model needs ``.venv-llm``, whose first build compiles llama.cpp (about
15 minutes on two cores). So that ``make run`` answers within seconds all the same, the demo does
this on a thread, like the sandboxed packages (``broker.demo.sandboxed``):

1. run ``examples/llm/build.sh`` (``broker.demo.llm_env``): nothing to do when the venv is up to
   date, about a minute when the wheel is cached, the full build otherwise, with progress lines
   and the whole output in ``<data_dir>/llama/llm-env-build.log``;
2. start llama.cpp's OpenAI-compatible server (``broker.demo.chat``);
3. register ``demo-vendor/smollm2-chat`` or repoint it at this run's port, and say it is callable.

Any failure is one line saying what failed and where its log is; the rest of the demo keeps
running. ``wait_for_wheels`` lets the sandboxed ``smollm2-chat`` package, the other user of the
llama-cpp-python wheel, wait until this build has made it rather than start a second one.
``stop`` ends the build (its whole process group) or the server, whichever is running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from broker.demo.chat import LlamaServerError, LlamaServerProcess, llm_env_ready, start_llama_server
from broker.demo.llm_env import BUILD_SCRIPT, LlmEnvError, build_llm_env, llama_wheels
from broker.errors import BrokerError

BUILD_LOG = "llm-env-build.log"
JOIN_SECONDS = 180.0  # the server's readiness wait (120 s) plus the build's stop grace, with room


class ChatPreparation:
    """Builds ``.venv-llm`` if needed, starts llama.cpp, registers the chat model; on a thread."""

    def __init__(
        self,
        venv: Path,
        workdir: Path,
        *,
        register: Callable[[str], str],
        say: Callable[[str], None],
        build_script: Path = BUILD_SCRIPT,
    ) -> None:
        """``register(base_url)`` registers the chat model at that URL and returns its ref."""
        self.venv = venv
        self.workdir = workdir
        self.log_path = workdir / BUILD_LOG
        self._register = register
        self._say = say
        self._build_script = build_script
        self._stopping = threading.Event()
        self._wheel_settled = threading.Event()  # the build ended: made the wheel, or failed
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="demo-chat", daemon=True)
        self.server: LlamaServerProcess | None = None
        self.model_ref = ""  # set once the model is registered and callable
        self.error = ""  # set when preparation failed

    def start(self) -> None:
        """Start preparing on a background thread; returns at once."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until preparation has ended (callable, failed or stopped); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_for_wheels(self) -> Path | None:
        """The wheel cache once this build has settled; None if it holds no wheel or we stop."""
        self._wheel_settled.wait()
        return None if self._stopping.is_set() else llama_wheels()

    def stop(self) -> None:
        """Stop the build or the server; idempotent. Returns once the thread has ended."""
        with self._lock:
            self._stopping.set()
            server = self.server
        self._wheel_settled.set()
        if server is not None:
            server.stop()
        if self._thread.is_alive():
            self._thread.join(JOIN_SECONDS)

    def _run(self) -> None:
        try:
            built = self._build()
        finally:
            self._wheel_settled.set()
        if not built or self._stopping.is_set():
            return
        self._say("chat model: starting llama.cpp's OpenAI-compatible server with SmolLM2-135M")
        try:
            server = start_llama_server(self.venv, self.workdir)
        except LlamaServerError as exc:
            self._fail(f"the llama.cpp server did not start: {exc}")
            return
        with self._lock:
            if self._stopping.is_set():
                server.stop()
                return
            self.server = server
        try:
            ref = self._register(server.base_url)
        except BrokerError as exc:
            server.stop()
            self._fail(f"could not register the chat model: {exc.message}")
            return
        self.model_ref = ref
        self._say(
            f"model {ref} is served by llama.cpp at {server.base_url} and callable now:\n"
            f"  .venv/bin/broker call {ref} --payload examples/demo/chat-call.json"
            " --label /messages/1/content=pii.name"
        )

    def _build(self) -> bool:
        if not llm_env_ready(self.venv):
            self._say(
                f"chat model: preparing {self.venv} in the background, the first time only; "
                f"full log: {self.log_path}"
            )
        try:
            return build_llm_env(
                self.venv,
                self.log_path,
                say=lambda line: self._say(f"chat model: {line}"),
                stop=self._stopping,
                script=self._build_script,
            )
        except (LlmEnvError, OSError) as exc:
            self._fail(str(exc))
            return False

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._say(f"chat model not available: {reason}. The rest of the demo keeps running.")
