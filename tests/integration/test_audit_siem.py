"""SIEM export and ``broker audit tail --follow`` against a real ``broker serve`` process.

- ``export --format ocsf`` and ``--format cef`` cover every entry under the checkpoint; every
  OCSF event validates against the published OCSF 1.8.0 schema; no payload value appears; a
  record picked from the export is proven with ``prove`` and ``verify-receipt --leaf-hash``.
- ``tail --follow`` runs as a log shipper would while calls are made and the broker is
  restarted under it: its lines have contiguous leaf indices (no gap, no duplicate), and each
  line's leaf hash is proven against a signed checkpoint with the offline verifier.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.audit.checkpoint import open_checkpoint
from broker.audit.export import read_export
from broker.audit.merkle import verify_inclusion
from broker.audit.note import Verifier
from broker.audit.verify import verify_export
from tests.integration.harness import FakeBackend, echo_model
from tests.integration.test_audit_crash_broker import _cli
from tests.integration.test_serve_process import ServeProcess
from tests.unit.audit import ocsf_schema

MODEL = "acme-models/echo@1.0.0"


def _calls(node: ServeProcess, text: str, count: int) -> list[str]:
    with node.client("bank", "buyer", max_attempts=1) as buyer:
        return [buyer.invoke(MODEL, {"text": text}).call_id for _ in range(count)]


def _auditor(node: ServeProcess) -> str:
    return node.issuer.mint(subject="siem-shipper", tenant="ops", roles=["auditor"])


def _complete_export(node: ServeProcess, token: str, workdir: Path, size: int) -> Any:
    """A verified complete export whose checkpoint covers at least ``size`` leaves."""
    deadline = time.monotonic() + 30
    while True:
        checkpoint = _cli(node, token, "audit", "checkpoint", "--vkey-out", str(workdir / "v"))
        assert checkpoint.returncode == 0, checkpoint.stderr
        export = _cli(node, token, "audit", "export", "-o", str(workdir / "log.jsonl"))
        assert export.returncode == 0, export.stderr
        manifest, items = read_export(workdir / "log.jsonl")
        if len(items) >= size or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    key = Verifier.from_vkey((workdir / "v").read_text().strip())
    report = verify_export(manifest, items, key)
    assert report.complete
    assert report.size >= size, "no checkpoint covered the entries in time"
    return manifest, items, key


def test_ocsf_and_cef_exports_are_valid_provable_and_hold_no_payload(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    node = ServeProcess(tmp_path / "var", database_url, {})
    try:
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(backend.target))
        _calls(node, canary, 3)
        with node.client("bank", "buyer", max_attempts=1) as buyer, pytest.raises(grpc.RpcError):
            buyer.invoke("acme-models/nope@1.0.0", {"text": canary})
        token = _auditor(node)
        _, items, _ = _complete_export(node, token, tmp_path, 8)

        ocsf = _cli(node, token, "audit", "export", "--format", "ocsf", "-o", str(tmp_path / "o"))
        assert ocsf.returncode == 0, ocsf.stderr
        text = (tmp_path / "o").read_text(encoding="utf-8")
        events = [json.loads(line) for line in text.splitlines()]
        cef = _cli(node, token, "audit", "export", "--format", "cef", "-o", "-")
        assert cef.returncode == 0, cef.stderr
        lines = cef.stdout.splitlines()
    finally:
        assert node.terminate() == 0

    assert canary not in text
    assert canary not in cef.stdout
    assert len(events) == len(lines) >= len(items)
    kinds = {e["api"]["operation"] for e in events}
    assert {"admin.model.registered", "call.intent", "call.outcome"} <= kinds
    for event in events:
        assert ocsf_schema.errors(event) == [], event["metadata"]["sequence"]
    assert [e["metadata"]["sequence"] for e in events] == list(range(len(events)))
    for event, line in zip(events, lines, strict=True):
        index, leaf = event["metadata"]["sequence"], event["metadata"]["uid"]
        assert f"cn1={index} " in line
        assert f"cs1={leaf} " in line
    denied = [e for e in events if e.get("status_code") == "NOT_FOUND"]
    assert len(denied) == 1
    assert denied[0]["status_id"] == 2


def test_a_siem_record_is_proven_with_prove_and_verify_receipt(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    node = ServeProcess(tmp_path / "var", database_url, {})
    try:
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(backend.target))
        (call_id,) = _calls(node, "x", 1)
        token = _auditor(node)
        _complete_export(node, token, tmp_path, 3)
        ocsf = _cli(
            node, token, "audit", "export", "--format", "ocsf", "--call-id", call_id, "-o", "-"
        )
        assert ocsf.returncode == 0, ocsf.stderr
        record = json.loads(ocsf.stdout.splitlines()[-1])
        index, leaf = record["metadata"]["sequence"], record["metadata"]["uid"]
        receipt = tmp_path / "r.json"
        prove = _cli(node, token, "audit", "prove", "--leaf-index", str(index), "-o", str(receipt))
        assert prove.returncode == 0, prove.stderr
    finally:
        assert node.terminate() == 0

    vkey = str(tmp_path / "v")
    ok = _cli(
        node, "", "audit", "verify-receipt", str(receipt), "--log-key", vkey, "--leaf-hash", leaf
    )
    assert ok.returncode == 0, ok.stderr
    assert f"OK leaf {index} (call.outcome, call {call_id})" in ok.stdout
    other = "0" * 64
    bad = _cli(
        node, "", "audit", "verify-receipt", str(receipt), "--log-key", vkey, "--leaf-hash", other
    )
    assert bad.returncode == 1
    assert "another entry" in bad.stderr


class _Follower:
    """``broker audit tail --follow`` as a subprocess; its lines arrive on a queue."""

    def __init__(self, node: ServeProcess, token: str, workdir: Path, *args: str) -> None:
        env = {**os.environ, "BROKER_TARGET": f"127.0.0.1:{node.port}", "BROKER_TOKEN": token}
        self.stderr_path = workdir / "tail.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli.main", "audit", "tail", "--follow", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def read_until(self, seen: list[dict[str, Any]], predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"tail printed {len(seen)} lines; stderr: {self.stderr_path.read_text()}"
                )
            try:
                seen.append(json.loads(self.lines.get(timeout=remaining)))
            except queue.Empty:
                continue

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()
        return self.stderr_path.read_text()


def _has_calls(call_ids: list[str]) -> Any:
    def check(seen: list[dict[str, Any]]) -> bool:
        outcomes = {
            json.loads(r["raw_data"])["call_id"]
            for r in seen
            if r["api"]["operation"] == "call.outcome"
        }
        return set(call_ids) <= outcomes

    return check


def test_tail_follows_across_a_restart_without_gap_or_duplicate(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    data_dir = tmp_path / "var"
    node = ServeProcess(data_dir, database_url, {})
    port = node.port
    seen: list[dict[str, Any]] = []
    with node.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    token = _auditor(node)
    tail = _Follower(
        node, token, tmp_path, "--from-index", "0", "--format", "ocsf",
        "--poll", "0.2", "--max-backoff", "1",
    )  # fmt: skip
    try:
        first = _calls(node, "before", 3)
        tail.read_until(seen, _has_calls(first))
        assert node.terminate() == 0
        time.sleep(1.0)  # the follower keeps polling a broker that is gone
        node = ServeProcess(
            data_dir,
            database_url,
            {"BROKER__SERVER__LISTEN": f"127.0.0.1:{port}"},
            log_name="broker-restarted.log",
        )
        second = _calls(node, "after", 3)
        tail.read_until(seen, _has_calls(second))
        _, items, key = _complete_export(node, token, tmp_path, len(seen))
        buyer = node.issuer.mint(subject="bank-svc", tenant="bank", roles=["buyer"])
        refused = _cli(node, buyer, "audit", "tail", "--follow", "--from-index", "0")
    finally:
        stderr = tail.stop()
        assert node.terminate() == 0

    assert "retrying from leaf" in stderr, stderr
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr
    indices = [r["metadata"]["sequence"] for r in seen]
    assert indices == list(range(len(indices))), "tail skipped or repeated a leaf"
    for record in seen:
        assert ocsf_schema.errors(record) == []
    by_index = {item.leaf_index: item for item in items}
    checkpoint = _checkpoint(tmp_path, key)
    for record in seen:
        index = record["metadata"]["sequence"]
        leaf = bytes.fromhex(record["metadata"]["uid"])
        item = by_index[index]
        assert item.proof is not None
        verify_inclusion(leaf, index, checkpoint.size, item.proof, checkpoint.root_hash)
        assert record["raw_data"].encode("utf-8") == item.entry


def _checkpoint(workdir: Path, key: Verifier) -> Any:
    manifest, _ = read_export(workdir / "log.jsonl")
    return open_checkpoint(manifest.checkpoint, [key], origin=key.name)[0]
