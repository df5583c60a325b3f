"""Build ``.venv-llm`` for the demo by running ``examples/llm/build.sh``, with a progress display.

The script is the one ``make llm-env`` and CI run; the demo does not repeat its logic. It builds
llama-cpp-python once into the wheel cache (about 15 minutes the first time, with portable CPU
flags), then installs the venv from that wheel (about a minute), and does nothing when the venv
is up to date. It holds a lock file in the wheel cache while it runs, so a second demo or
``make llm-env`` waits for the first instead of compiling into the same directories.

Here it runs in its own process group with ``LLM_PIP_VERBOSE=1``; every output line goes to a log
file and ``BuildProgress`` picks the few worth showing. Setting the ``stop`` event ends the build:
the whole group (pip, cmake, ninja, the compilers) gets SIGTERM, then SIGKILL, so no compiler
outlives the demo. The venv counts as ready only once the script has written its stamp
(``broker.demo.chat.llm_env_ready``), so a stopped build is resumed, not trusted, next time.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from broker.demo.build_progress import BuildProgress
from broker.demo.child import ChildServer

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llm" / "build.sh"
LLAMA_WHEEL_GLOB = "llama_cpp_python-0.3.36-*.whl"  # the version pinned in examples/llm
POLL_SECONDS = 0.5  # how often a quiet build checks the stop event and the heartbeat
STOP_GRACE_SECONDS = 5.0


class LlmEnvError(RuntimeError):
    """The build script failed; the message says at which stage, why, and where the log is."""


def wheel_cache() -> Path:
    """Where ``examples/llm/build.sh`` keeps its wheels (the same variables, the same default)."""
    if os.environ.get("LLM_WHEELS"):
        return Path(os.environ["LLM_WHEELS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "model-broker" / "wheels"


def llama_wheels() -> Path | None:
    """The wheel cache, if it holds the llama-cpp-python wheel; None before the first build."""
    folder = wheel_cache()
    return folder if any(folder.glob(LLAMA_WHEEL_GLOB)) else None


def build_llm_env(
    venv: Path,
    log_path: Path,
    *,
    say: Callable[[str], None],
    stop: threading.Event,
    script: Path = BUILD_SCRIPT,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Run the build script for ``venv``; True when it is ready, False when ``stop`` ended it.

    Raises ``LlmEnvError`` if the script fails. Blocks for the whole build: call it from a
    background thread.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LLM_VENV": str(venv.absolute()),
        "PYTHON": sys.executable,  # the broker's own Python: 3.11+, with pip
        "LLM_PIP_VERBOSE": "1",
        "PYTHONUNBUFFERED": "1",  # lines as they happen, not in 8 KiB lumps
    }
    progress = BuildProgress(started=clock())
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own script, fixed argv, no shell
            [str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopping reaches every compiler
        )
        build = ChildServer(process=process, log_path=log_path)
        lines: queue.Queue[bytes | None] = queue.Queue()
        assert process.stdout is not None  # stdout=PIPE above
        threading.Thread(
            target=_pump, args=(process.stdout, lines), name="llm-env-output", daemon=True
        ).start()
        finished = False
        try:
            finished = _follow(lines, log, progress, say=say, stop=stop, clock=clock)
        finally:
            if process.poll() is None and not finished:
                build.stop(grace_seconds=STOP_GRACE_SECONDS)
    if not finished:
        return False
    code = process.wait()
    if code != 0:
        reason = progress.last_error or progress.last_line or "no output"
        raise LlmEnvError(
            f"building {venv} failed (exit status {code}) while {progress.stage}: {reason}; "
            f"full log: {log_path}"
        )
    return True


def _follow(
    lines: queue.Queue[bytes | None],
    log: IO[bytes],
    progress: BuildProgress,
    *,
    say: Callable[[str], None],
    stop: threading.Event,
    clock: Callable[[], float],
) -> bool:
    """Log and show the output until it ends (True) or ``stop`` is set (False)."""
    while not stop.is_set():
        try:
            raw = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            shown = progress.tick(clock())
        else:
            if raw is None:
                return True
            log.write(raw)
            log.flush()
            shown = progress.feed(raw.decode("utf-8", "replace"), clock())
        if shown is not None:
            say(shown)
    return False


def _pump(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    """Move the script's output lines to ``lines``; None once it has closed its output."""
    with stream:
        for raw in iter(stream.readline, b""):
            lines.put(raw)
    lines.put(None)
