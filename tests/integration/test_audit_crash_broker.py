"""SIGKILL a broker in the middle of a load: every answered call stays on the record.

After a restart on the same data, every call that was answered OK has its intent and outcome
entries, and an export of the whole log verifies offline (no half batch, nothing reordered).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from tests.integration.harness import FakeBackend, echo_model
from tests.integration.test_serve_process import ServeProcess

MODEL = "acme-models/echo@1.0.0"


def _cli(node: ServeProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_at(f"127.0.0.1:{node.port}", token, *args)


def cli_at(target: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``broker <args>`` against the broker at ``target`` with ``token``, output captured."""
    env = {**os.environ, "BROKER_TARGET": target, "BROKER_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def assert_exported_log_verifies(node: ServeProcess, token: str, workdir: Path) -> None:
    """A checkpoint, then the whole log exported and verified offline: no gap, no reordering."""
    checkpoint = _cli(node, token, "audit", "checkpoint", "--vkey-out", str(workdir / "v"))
    assert checkpoint.returncode == 0, checkpoint.stderr
    export = _cli(node, token, "audit", "export", "-o", str(workdir / "log.jsonl"))
    assert export.returncode == 0, export.stderr
    verify = _cli(
        node, token, "audit", "verify", str(workdir / "log.jsonl"), "--log-key", str(workdir / "v")
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK complete log")


def test_answered_calls_survive_sigkill(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    data_dir = tmp_path / "var"
    node = ServeProcess(data_dir, database_url, {})
    with node.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))

    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with node.client("bank", "buyer", max_attempts=1) as buyer:
            while not stop.is_set():
                try:
                    answered.append(buyer.invoke(MODEL, {"text": "x"}, timeout=10).call_id)
                except grpc.RpcError:
                    return  # the broker is gone

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    node.process.send_signal(signal.SIGKILL)
    assert node.terminate() == -signal.SIGKILL
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answered) >= 40, "the load did not get going"

    node = ServeProcess(data_dir, database_url, {}, log_name="broker-restarted.log")
    try:
        token = node.issuer.mint(subject="auditor", tenant="ops", roles=["auditor"])
        query = _cli(node, token, "audit", "query", "--kind", "call.outcome", "--all", "--json")
        assert query.returncode == 0, query.stderr
        outcomes = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
        logged = {str(e.get("call_id")) for e in outcomes if e.get("status") == "OK"}
        missing = [call_id for call_id in answered if call_id not in logged]
        assert missing == [], f"{len(missing)} answered calls have no outcome entry"

        assert_exported_log_verifies(node, token, tmp_path)
    finally:
        assert node.terminate() == 0
