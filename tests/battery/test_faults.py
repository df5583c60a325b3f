"""Faults under a running ``broker serve`` process (issue 16, item 3).

Each test breaks one thing the broker depends on, while calls go on: its SQLite file becomes
read-only, its disk fills up, its retention root key file disappears, a vendor answers slowly,
resets the connection or sends 100 MB. Each time the broker must fail closed (a clear status and
message, never an answer without its audit entries) and serve again by itself once the fault is
gone. PostgreSQL stopped and restarted mid-load is exercised by
``tests/integration/test_cluster.py`` (three replicas behind HAProxy, a private server) and
``tests/integration/test_replicas.py`` (one replica cut off and reconnected); the battery does
not run it a third time.

Disk-full mounts a small tmpfs as the data directory, which needs root (CI runs as root);
elsewhere it skips with that reason, and in CI it fails instead. As root, the read-only test
runs the broker without the capabilities that let root ignore file modes (``setpriv``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import pytest

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2
from broker.retention.rootkey import generate_root_key_file
from tests.battery.node import MIB, audit_gaps, audit_rows, start_node
from tests.conftest import skip_or_fail
from tests.integration.fake_openai import start_fake_openai
from tests.integration.harness import FakeBackend, echo_model, start_fake_backend
from tests.integration.test_serve_process import ServeProcess
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL = "acme-models/echo@1.0.0"
CHAT_MODEL = "chat-vendor/fake-chat@1.0.0"


@dataclass
class Calls:
    """Invoke calls made against a node, with what each got: answered call ids, and the
    (status, message) of each failure."""

    node: ServeProcess
    tenant: str = "bank"
    answered: list[str] = field(default_factory=list)
    failed: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)

    def invoke(
        self, model: str = MODEL, payload: bytes = b'{"text": "x"}', timeout: float = 20
    ) -> grpc.StatusCode:
        token = self.node.issuer.mint(
            subject=f"{self.tenant}-svc", tenant=self.tenant, roles=["buyer"]
        )
        with grpc.insecure_channel(f"127.0.0.1:{self.node.port}") as channel:
            try:
                reply = broker_pb2_grpc.BrokerStub(channel).Invoke(
                    broker_pb2.InvokeRequest(model=model, json=payload),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=timeout,
                )
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
                self.failed.append((code, str(exc.details())))  # type: ignore[attr-defined]
                return code
        self.answered.append(reply.call_id)
        return grpc.StatusCode.OK


def assert_answered_calls_audited(database_url: str, calls: Calls, *, unwritten: int = 0) -> None:
    """Every answered call has its intent and outcome; every intent its outcome, except at most
    ``unwritten``: calls refused because their outcome could not be written (their intent was,
    before the model was called; the answer was withheld)."""
    rows = audit_rows(database_url)
    intents = {r.call_id for r in rows if r.kind == "call.intent"}
    assert [c for c in calls.answered if c not in intents] == []
    gaps = audit_gaps(rows, calls.answered)
    assert gaps["no_outcome"] == []
    assert len(gaps["intent_without_outcome"]) <= unwritten, gaps


def register_echo(node: ServeProcess, backend: FakeBackend) -> None:
    with node.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    started = start_fake_backend()
    yield started
    started.server.stop(0)


# -- the data directory on a small tmpfs: read-only, then full -----------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted as the node's data directory (root only)."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs as the data directory needs root (CI runs as root)")
    mount = tmp_path / "var"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# As root, file modes bind nobody: the broker runs without the capabilities that override them.
_NO_DAC = "-dac_override,-dac_read_search,-fowner"
AS_NON_ROOT = (
    ("setpriv", f"--inh-caps={_NO_DAC}", f"--bounding-set={_NO_DAC}", "--")
    if os.geteuid() == 0
    else ()
)


def _set_modes(directory: Path, files: int, folder: int) -> None:
    for path in directory.iterdir():
        path.chmod(files)
    directory.chmod(folder)


def test_a_read_only_database_file_fails_closed_and_service_resumes(
    tmp_path: Path, backend: FakeBackend
) -> None:
    """The database's files and folder made read-only under a running node: SQLite writes
    through the descriptors it opened, so calls go on, each audited. A node (re)started on
    read-only files refuses to start, naming the file; with the modes restored it starts and
    serves."""
    database_dir = tmp_path / "db"
    database_dir.mkdir()
    database_url = f"sqlite:///{database_dir / 'broker.db'}"
    node = start_node(tmp_path / "var", database_url, command_prefix=AS_NON_ROOT)
    calls = Calls(node)
    try:
        register_echo(node, backend)
        assert calls.invoke() is grpc.StatusCode.OK
        _set_modes(database_dir, 0o444, 0o555)
        for _ in range(5):
            assert calls.invoke() is grpc.StatusCode.OK, calls.failed
    finally:
        assert node.terminate() == 0
    try:
        refused = subprocess.run(
            [*AS_NON_ROOT, sys.executable, "-m", "broker.cli.main", "serve"],
            env=_serve_env(tmp_path / "var", database_url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        _set_modes(database_dir, 0o644, 0o755)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stdout + refused.stderr
    assert str(database_dir) in refused.stdout + refused.stderr
    node = start_node(
        tmp_path / "var", database_url, log_name="broker-again.log", command_prefix=AS_NON_ROOT
    )
    try:
        assert Calls(node).invoke() is grpc.StatusCode.OK
    finally:
        assert node.terminate() == 0
    assert_answered_calls_audited(database_url, calls)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    block = b"\0" * MIB
    with filler.open("wb") as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    for size in (64 * 1024, 4096, 512, 1):  # the last partial blocks too
        with suppress(OSError), filler.open("ab") as out:
            while True:
                out.write(b"\0" * size)
                out.flush()
    return filler


def test_a_full_disk_fails_closed_and_service_resumes_when_space_is_freed(
    small_tmpfs: Path, backend: FakeBackend
) -> None:
    database_url = f"sqlite:///{small_tmpfs / 'broker.db'}"
    node = start_node(small_tmpfs, database_url)
    calls = Calls(node)
    canary = f"CANARY-{uuid.uuid4().hex}"
    try:
        register_echo(node, backend)
        assert calls.invoke() is grpc.StatusCode.OK
        filler = _fill(small_tmpfs)
        # The WAL may still hold reusable pages: call until the database needs a new one.
        for _ in range(400):
            if calls.invoke(payload=orjson.dumps({"text": canary * 40})) is not grpc.StatusCode.OK:
                break
        assert calls.failed, "the full disk never refused a write"
        assert {code for code, _ in calls.failed} == {grpc.StatusCode.UNAVAILABLE}, calls.failed
        filler.unlink()
        wait_until(lambda: calls.invoke() is grpc.StatusCode.OK, "calls are answered again")
        # The outcomes the full disk refused are written once it has room: every intent gets
        # its outcome, saying UNAVAILABLE as the caller was told (broker.calls.late_outcomes).
        wait_until(
            lambda: audit_gaps(audit_rows(database_url), [])["intent_without_outcome"] == [],
            "the refused outcomes are written",
        )
    finally:
        node.terminate()
    assert canary not in node.log_path.read_text(errors="replace")
    assert {message for _, message in calls.failed} == {
        "audit log cannot be written: the database's disk is full"
    }
    assert_answered_calls_audited(database_url, calls)
    unavailable = [
        r
        for r in audit_rows(database_url)
        if r.kind == "call.outcome" and r.status == "UNAVAILABLE"
    ]
    assert len(unavailable) == len(calls.failed)  # one outcome for each refused call, no more


# -- the retention root key file removed ------------------------------------------------------


def test_a_removed_root_key_file_stops_the_next_start_and_restoring_it_heals(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, backend: FakeBackend
) -> None:
    """The key is read once at start and held in memory: a running node keeps its records
    readable. A node started without the file refuses to start, naming what is missing, rather
    than run with retention off over records it could not open; with the file back it starts
    and serves, and the records kept before are still there."""
    key_file = tmp_path_factory.mktemp("secrets") / "root.key"
    generate_root_key_file(key_file)
    saved = key_file.read_bytes()
    database_url = f"sqlite:///{tmp_path / 'broker.db'}"
    env = {"BROKER__RETENTION__ROOT_KEY_FILE": str(key_file)}
    node = start_node(tmp_path / "var", database_url, **env)
    calls = Calls(node, tenant="acme")  # the shipped policy keeps tenant acme's calls
    try:
        register_echo(node, backend)
        assert calls.invoke() is grpc.StatusCode.OK
        key_file.unlink()
        assert calls.invoke() is grpc.StatusCode.OK  # the running node holds its key
    finally:
        assert node.terminate() == 0
    refused = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "serve"],
        env={**_serve_env(tmp_path / "var", database_url), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
    assert "root key" in (refused.stdout + refused.stderr).lower()
    assert str(key_file) in refused.stdout + refused.stderr
    key_file.write_bytes(saved)
    key_file.chmod(0o600)
    node = start_node(tmp_path / "var", database_url, log_name="broker-again.log", **env)
    try:
        again = Calls(node, tenant="acme")
        assert again.invoke() is grpc.StatusCode.OK
        calls.answered += again.answered
    finally:
        assert node.terminate() == 0
    assert_answered_calls_audited(database_url, calls)


def _serve_env(data_dir: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "BROKER__DATA_DIR": str(data_dir),
        "BROKER__SERVER__LISTEN": "127.0.0.1:0",
        "BROKER__DATABASE__URL": database_url,
        "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
    }


# -- vendors that misbehave -------------------------------------------------------------------


@dataclass
class Vendors:
    """One node for the vendor faults (each test counts only the intents it caused)."""

    node: ServeProcess
    database_url: str
    backend: FakeBackend

    def intents(self) -> set[str]:
        return {r.call_id for r in audit_rows(self.database_url) if r.kind == "call.intent"}


@pytest.fixture(scope="module")
def vendors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendors]:
    root = tmp_path_factory.mktemp("vendors")
    database_url = f"sqlite:///{root / 'broker.db'}"
    backend = start_fake_backend()
    node = start_node(root / "var", database_url)
    try:
        register_echo(node, backend)
        yield Vendors(node, database_url, backend)
    finally:
        node.terminate()
        backend.server.stop(0)


def test_a_slow_vendor_meets_the_callers_deadline_and_the_call_is_audited(
    vendors: Vendors,
) -> None:
    node, database_url, backend = vendors.node, vendors.database_url, vendors.backend
    before = vendors.intents()
    calls = Calls(node)
    backend.log.delay_seconds = 30
    try:
        for _ in range(3):
            assert calls.invoke(timeout=1.0) is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: len(backend.log.cancelled) >= 3, "the slow calls are cut off")
    finally:
        backend.log.delay_seconds = 0
    assert calls.invoke() is grpc.StatusCode.OK
    rows = audit_rows(database_url)
    slow = vendors.intents() - before - set(calls.answered)
    assert len(slow) == 3
    outcomes = {r.call_id: r.status for r in rows if r.kind == "call.outcome"}
    assert {outcomes[c] for c in slow} <= {"DEADLINE_EXCEEDED", "CANCELLED"}
    assert_answered_calls_audited(database_url, calls)


class ResettingServer:
    """A TCP server that reads a little of each connection, then resets it (SO_LINGER 0)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.resets = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with suppress(OSError):
                conn.settimeout(5)
                conn.recv(1024)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            self.resets += 1

    def close(self) -> None:
        self.sock.close()


def _chat_model(name: str, base_url: str) -> models_pb2.Model:
    return models_pb2.Model(
        name=name,
        version="1.0.0",
        runtime=models_pb2.RUNTIME_OPENAI_HTTP,
        endpoint=models_pb2.Endpoint(target=base_url, remote_model="fake"),
        fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
    )


CHAT = orjson.dumps({"messages": [{"role": "user", "content": "hello"}]})


def test_a_vendor_that_resets_the_connection_is_unavailable_and_audited(
    vendors: Vendors,
) -> None:
    node, database_url = vendors.node, vendors.database_url
    before = vendors.intents()
    resetting = ResettingServer()
    try:
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(f"127.0.0.1:{resetting.port}", name="resets"))
        with node.client("chat-vendor", "vendor") as vendor:
            vendor.register_model(_chat_model("resets", f"http://127.0.0.1:{resetting.port}/v1"))
        calls = Calls(node)
        assert calls.invoke("acme-models/resets@1.0.0") is grpc.StatusCode.UNAVAILABLE
        assert calls.invoke("chat-vendor/resets@1.0.0", CHAT) is grpc.StatusCode.UNAVAILABLE
        assert resetting.resets >= 2
        assert calls.invoke() is grpc.StatusCode.OK  # the other vendor is unaffected
    finally:
        resetting.close()
    for _, message in calls.failed:
        assert "model" in message or "backend" in message or "vendor" in message, message
    rows = audit_rows(database_url)
    outcomes = {r.call_id: r.status for r in rows if r.kind == "call.outcome"}
    failed = vendors.intents() - before - set(calls.answered)
    assert len(failed) == 2
    assert {outcomes[c] for c in failed} == {"UNAVAILABLE"}
    assert_answered_calls_audited(database_url, calls)


def test_a_vendor_that_sends_100_mb_is_cut_off_and_audited(vendors: Vendors) -> None:
    node, database_url = vendors.node, vendors.database_url
    before = vendors.intents()
    fake = start_fake_openai()
    fake.script, fake.huge_bytes = "huge", 100 * MIB
    try:
        with node.client("chat-vendor", "vendor") as vendor:
            vendor.register_model(_chat_model("huge", fake.base_url))
        calls = Calls(node)
        code = calls.invoke("chat-vendor/huge@1.0.0", CHAT, timeout=60)
        assert code in {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN}, calls.failed
        assert "bytes" in calls.failed[-1][1]
        streamed = _stream_code(node, "chat-vendor/huge@1.0.0")
        assert streamed in {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN}
        # The broker hung up long before 100 MB (twice: the Invoke and the stream).
        assert fake.sent_bytes < 40 * MIB, fake.sent_bytes
        fake.script = "echo"
        assert calls.invoke("chat-vendor/huge@1.0.0", CHAT) is grpc.StatusCode.OK
    finally:
        fake.stop()
    assert_answered_calls_audited(database_url, calls)
    assert len(vendors.intents() - before) == 3


def _stream_code(node: ServeProcess, model: str) -> grpc.StatusCode:
    token = node.issuer.mint(subject="bank-svc", tenant="bank", roles=["buyer"])
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        try:
            for _ in broker_pb2_grpc.BrokerStub(channel).InvokeStream(
                broker_pb2.InvokeRequest(model=model, json=CHAT),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=60,
            ):
                pass
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
            return code
    return grpc.StatusCode.OK


# -- the sandbox's cgroup removed under a worker ----------------------------------------------

ECHO_PACKAGE = Path(__file__).resolve().parents[1] / "sandbox" / "echo_pkg"
SANDBOX_MODEL = "acme-models/sandboxed-echo@1.0.0"


def _worker_groups(node: ServeProcess) -> list[Path]:
    """The per-worker cgroup directories (any hierarchy) holding a process of ``node``."""
    import psutil  # noqa: PLC0415

    ours = {str(p.pid) for p in psutil.Process(node.process.pid).children(recursive=True)}
    found = []
    for group in Path("/sys/fs/cgroup").glob("**/model-broker/worker-*"):
        with suppress(OSError):
            if ours & set((group / "cgroup.procs").read_text().split()):
                found.append(group)
    return found


def _remove_under_worker(group: Path) -> None:
    """What an agent tidying cgroups does: move the processes out, then remove the group."""
    parent = group.parent.parent  # the broker's own cgroup (v1) or its leaf's parent (v2)
    target = parent / "broker" if (parent / "broker" / "cgroup.procs").exists() else parent
    for pid in (group / "cgroup.procs").read_text().split():
        with suppress(OSError):
            (target / "cgroup.procs").write_text(pid)
    group.rmdir()


def test_a_cgroup_removed_under_a_sandbox_worker_stops_it_and_service_resumes(
    tmp_path: Path,
) -> None:
    from broker.packages.store import PackageStore  # noqa: PLC0415
    from broker.runtimes.sandbox.probe import sandbox_support  # noqa: PLC0415

    missing = sandbox_support()
    if missing:
        skip_or_fail("sandbox unavailable: " + "; ".join(missing))
    database_url = f"sqlite:///{tmp_path / 'broker.db'}"
    node = start_node(tmp_path / "var", database_url, BROKER__SERVER__WORKERS="1")
    calls = Calls(node)
    payload = b'{"name": "Ada"}'
    try:
        in_use = next(e for e in node.events() if e.get("event") == "sandbox_cgroups")
        if not in_use.get("in_use"):
            skip_or_fail("this host gives the broker no cgroups for its sandbox workers")
        digest = PackageStore(tmp_path / "var").add(ECHO_PACKAGE).digest
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(
                models_pb2.Model(
                    name="sandboxed-echo",
                    version="1.0.0",
                    runtime=models_pb2.RUNTIME_SANDBOX,
                    package_digest=digest,
                    fields=[models_pb2.FieldSpec(path="/name", type="string")],
                )
            )
        assert calls.invoke(SANDBOX_MODEL, payload, timeout=60) is grpc.StatusCode.OK
        groups = _worker_groups(node)  # the idle worker's, one per hierarchy in use
        assert groups
        for group in groups:
            _remove_under_worker(group)
        assert calls.invoke(SANDBOX_MODEL, payload, timeout=60) is grpc.StatusCode.UNAVAILABLE
        assert "lost its cgroup" in calls.failed[-1][1]
        wait_until(
            lambda: calls.invoke(SANDBOX_MODEL, payload, timeout=60) is grpc.StatusCode.OK,
            "a fresh worker in a new cgroup answers",
        )
        assert _worker_groups(node)  # the new worker is confined
    finally:
        node.terminate()
    retired = [e for e in node.events() if e.get("event") == "sandbox_worker_retired"]
    assert any(e.get("reason") == "SandboxUnconfined" for e in retired), retired
    assert_answered_calls_audited(database_url, calls)
