"""The demo prepares its chat model in the background; failures and Ctrl-C leave the rest running.

These run the real ``broker demo`` node (MLServer, the broker, the background preparation) with
``examples/llm/build.sh`` swapped for a script that fails or hangs, so that no test compiles
llama.cpp; the lock test runs the real script, stopped before it could build anything. The happy
path (the real script building a venv from the wheel cache, a real chat call) is
``tests/sandbox/test_chat_demo.py``.
"""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import orjson
import pytest

from broker.demo.llm_env import build_llm_env
from broker.demo.setup import DEMO_VENDOR, EXAMPLES
from broker.errors import NotFound
from broker.registry.store import RegistryStore
from tests.integration.demo_harness import Said, alive, running_demo, wait_gone, write_script

pytestmark = pytest.mark.slow

FAILING_BUILD = """
echo "llm-env: building llama-cpp-python 0.3.36 from source (about 10-15 minutes on 2 cores)"
echo "  *** Configuring CMake..."
echo "  CMake Error at CMakeLists.txt:3 (project): No CMAKE_C_COMPILER could be found." >&2
exit 1
"""


def test_a_failing_build_is_one_clear_line_and_iris_keeps_answering(
    tmp_path: Path, mlserver_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path / "build.sh", FAILING_BUILD)
    llm_venv = tmp_path / "venv-llm"
    said = Said(capsys)
    demo_run = running_demo(tmp_path, mlserver_venv, llm_venv=llm_venv, build_script=script)
    with demo_run as (demo, broker):
        assert demo.chat.join(timeout=60)
        failure = said.wait_for("chat model not available", timeout=5)
        log = demo.chat.log_path
        assert failure == (
            f"[demo] chat model not available: building {llm_venv} failed (exit status 1) while "
            "configuring llama.cpp (cmake): CMake Error at CMakeLists.txt:3 (project): "
            f"No CMAKE_C_COMPILER could be found.; full log: {log}. "
            "The rest of the demo keeps running."
        )
        assert sum("not available" in line for line in said.lines()) == 1
        assert "No CMAKE_C_COMPILER" in log.read_text()  # the full output is in the log

        buyer = broker.client("acme-bank", "buyer")
        payload = orjson.loads((EXAMPLES / "iris-call.json").read_bytes())
        assert buyer.invoke(demo.iris_ref, payload, timeout=30).answer == {"species": 2}
        with pytest.raises(NotFound):
            RegistryStore(demo.engine).get(DEMO_VENDOR, "smollm2-chat", "1.0.0")
        assert demo.chat.server is None


HANGING_BUILD = """
echo $$ > "{pids}/script"
sleep 600 &  # stands in for the compiler: a child in the script's process group
echo $! > "{pids}/compiler"
echo "llm-env: building llama-cpp-python 0.3.36 from source (about 10-15 minutes on 2 cores)"
wait
"""


def test_stopping_the_demo_stops_the_build_and_its_children(
    tmp_path: Path, mlserver_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = write_script(tmp_path / "build.sh", HANGING_BUILD.format(pids=pids))
    said = Said(capsys)
    demo_run = running_demo(
        tmp_path, mlserver_venv, llm_venv=tmp_path / "venv-llm", build_script=script
    )
    with demo_run as (demo, _broker):
        said.wait_for("chat model: building llama-cpp-python", timeout=30)
        said.wait_for(f"full log: {demo.chat.log_path}", timeout=1)
        compiler = int((pids / "compiler").read_text())
        script_pid = int((pids / "script").read_text())
        assert alive(compiler)
    # Leaving the block is what Ctrl-C does: the broker stops, then DemoNode.stop().
    assert demo.chat.join(timeout=0)
    assert wait_gone(compiler), "the build's child outlived the demo"
    assert wait_gone(script_pid)
    assert demo.mlserver.process.poll() is not None
    assert not any("not available" in line for line in said.lines())  # stopping is no failure


def test_a_second_build_waits_for_the_lock_instead_of_building_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real build.sh against an empty wheel cache whose lock another build holds."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("LLM_WHEELS", str(wheels))
    venv = tmp_path / "venv-llm"
    said: list[str] = []
    stop = threading.Event()
    result: list[bool] = []
    with (wheels / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first build, still running
        build = threading.Thread(
            target=lambda: result.append(
                build_llm_env(venv, tmp_path / "build.log", say=said.append, stop=stop)
            )
        )
        build.start()
        try:
            deadline = time.monotonic() + 30
            while not any("waiting for another build" in line for line in said):
                if time.monotonic() > deadline:
                    pytest.fail(f"the second build did not wait for the lock; it said {said}")
                time.sleep(0.1)
        finally:
            stop.set()  # Ctrl-C while waiting
            build.join(timeout=30)
    assert result == [False]
    assert not (venv / "bin" / "python").exists()
    assert not list(wheels.glob("*.whl"))
