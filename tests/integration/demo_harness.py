"""Run the demo node (``broker.demo.setup.start_demo_node``) in-process, as ``broker demo`` does.

The node gets a temporary data dir, SQLite, a free port and the development issuer; the test
serves it with ``node.start()`` where ``broker demo`` calls ``serve_forever()``, and stops it the
way Ctrl-C does: the broker first, then ``DemoNode.stop()``. What the demo says to its terminal
(stderr) is read with ``Said``, so tests assert on the lines a person sees.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker.auth.dev_issuer import DevIssuer
from broker.config import load_config
from broker.demo.llm_env import BUILD_SCRIPT
from broker.demo.sandboxed import DemoPackage
from broker.demo.setup import DemoNode, start_demo_node
from tests.integration.harness import BrokerHarness

POLL_SECONDS = 0.2


class Said:
    """The demo's terminal output so far; ``wait_for`` polls it for a line."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._lines: list[str] = []

    def lines(self) -> list[str]:
        self._lines += self._capsys.readouterr().err.splitlines()
        return list(self._lines)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                pytest.fail(f"the demo never said {text!r}; it said:\n" + "\n".join(self._lines))
            time.sleep(POLL_SECONDS)


@contextmanager
def running_demo(
    tmp_path: Path,
    mlserver_venv: Path,
    *,
    llm_venv: Path,
    build_script: Path = BUILD_SCRIPT,
    sandboxed: tuple[DemoPackage, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[DemoNode, BrokerHarness]]:
    """A serving demo node; on exit the broker stops, then everything the demo started."""
    environ = {
        "BROKER__DATA_DIR": str(tmp_path / "var"),
        "BROKER__SERVER__LISTEN": "127.0.0.1:0",
        "BROKER__DATABASE__URL": f"sqlite:///{tmp_path / 'broker.db'}",
        "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
        "BROKER__SERVER__SHUTDOWN_GRACE_SECONDS": "5",
        # One in-process worker, so the test holds the server itself (``make run`` runs one
        # per core; tests/integration/test_workers.py covers several).
        "BROKER__SERVER__WORKERS": "1",
        **(env or {}),
    }
    config = load_config(None, environ)
    demo = start_demo_node(
        config,
        mlserver_venv=mlserver_venv,
        llm_venv=llm_venv,
        llm_build_script=build_script,
        sandboxed=sandboxed,
    )
    harness = BrokerHarness(demo.node, config, DevIssuer(config.data_dir, config.auth.dev_issuer))
    try:
        demo.node.start()
        yield demo, harness
    finally:
        harness.stop()
        demo.stop()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    """Poll until ``pid`` is gone; False if it is still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def write_script(path: Path, body: str) -> Path:
    """An executable bash script standing in for ``examples/llm/build.sh``."""
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path
