"""``make run`` starts the compliance console beside the demo broker and prints its URL."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from broker.config import load_config
from broker.demo.setup import EXAMPLES
from tests.integration.demo_harness import Said, running_demo, write_script

pytestmark = pytest.mark.slow


def test_the_demo_serves_the_console_and_stops_it(
    tmp_path: Path, mlserver_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_config(EXAMPLES / "broker.toml").console.listen == "127.0.0.1:8080"
    # The same console on a free port (8080 may be taken on a shared machine), and a chat
    # build that fails at once, so that nothing compiles.
    script = write_script(tmp_path / "build.sh", "exit 1\n")
    said = Said(capsys)
    demo_run = running_demo(
        tmp_path,
        mlserver_venv,
        llm_venv=tmp_path / "venv-llm",
        build_script=script,
        env={"BROKER__CONSOLE__LISTEN": "127.0.0.1:0"},
    )
    with demo_run as (demo, broker):
        line = said.wait_for("compliance console at", timeout=10)
        url = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)  # type: ignore[union-attr]
        assert demo.console is not None
        assert demo.console.url == url + "/"
        with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as client:
            page = client.get("/login")
            nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            token = broker.token("acme-bank", "compliance")
            entries = client.post("/login", data={"token": token, "login_csrf": nonce})
            assert entries.status_code == 200
            assert "Audit entries" in entries.text
            assert "acme-bank" in entries.text
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/login", timeout=5)
