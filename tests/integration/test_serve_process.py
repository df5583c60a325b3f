"""``broker serve`` as an operator runs it: a real process, signals, logs, TLS."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.auth.dev_issuer import DevIssuer
from broker.client import BrokerClient
from broker.config import DevIssuerConfig
from tests.integration.harness import FakeBackend, echo_model


class ServeProcess:
    """``python -m broker.cli.main serve`` with its JSON log captured to a file.

    ``log_name``: a node started again on the same data directory writes a log of its own, as
    the workers of a killed node may still be draining (and writing) for a few seconds.
    ``command_prefix``: run the broker under it (for example ``setpriv`` dropping capabilities).
    """

    def __init__(
        self,
        data_dir: Path,
        database_url: str,
        extra_env: dict[str, str],
        *,
        log_name: str = "broker.log",
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / log_name
        env = {
            **os.environ,
            "BROKER__DATA_DIR": str(data_dir),
            "BROKER__SERVER__LISTEN": "127.0.0.1:0",
            "BROKER__DATABASE__URL": database_url,
            "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
            **extra_env,
        }
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*command_prefix, sys.executable, "-m", "broker.cli.main", "serve"],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port()
        self.issuer = DevIssuer(data_dir, DevIssuerConfig(enabled=True))

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "server_started":
                    return int(event["port"])
            if self.process.poll() is not None:
                raise AssertionError(f"broker exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"broker did not start:\n{self.log_path.read_text()}")

    def events(self) -> list[dict[str, object]]:
        """The JSON events logged so far; a last line still being written is left for later."""
        text = self.log_path.read_text(errors="replace")
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def client(self, tenant: str, role: str, **kwargs: object) -> BrokerClient:
        token = self.issuer.mint(subject=f"{tenant}-svc", tenant=tenant, roles=[role])
        return BrokerClient(f"127.0.0.1:{self.port}", token=token, **kwargs)  # type: ignore[arg-type]

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.close_log()
        return code

    def close_log(self) -> None:
        """Closes the test's handle on the log; the file stays readable by ``events()``."""
        self._log_file.close()


def metrics_page(node: ServeProcess) -> str:
    """The node's /metrics page (``[metrics] listen`` on port 0: the port is in the log)."""
    port = next(e["port"] for e in node.events() if e.get("event") == "metrics_started")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def test_sigterm_drains_in_flight_calls(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    node = ServeProcess(tmp_path / "var", database_url, {})
    with node.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    backend.log.delay_seconds = 1.5
    outcome: dict[str, object] = {}

    def call() -> None:
        with node.client("bank", "buyer") as buyer:
            outcome["answer"] = buyer.invoke("acme-models/echo@1.0.0", {"text": "x"}).answer

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    while not backend.log.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.terminate() == 0
    thread.join()
    assert outcome["answer"] == {"echo": "x"}
    names = [event["event"] for event in node.events()]
    assert names.index("server_draining") < names.index("server_stopped")


def test_one_log_event_per_call_and_no_payload_value_anywhere(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    node = ServeProcess(tmp_path / "var", database_url, {"BROKER__METRICS__LISTEN": "127.0.0.1:0"})
    try:
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(backend.target))
        with node.client("bank", "buyer", max_attempts=1) as buyer:
            assert buyer.invoke("acme-models/echo@1.0.0", {"text": canary}).answer == {
                "echo": canary
            }
            failures = [
                b'{"text": "' + canary.encode() + b'", broken',
                ('{"text": "' + canary + '", "x": ' + "[" * 80 + "]" * 80 + "}").encode(),
            ]
            for payload in failures:
                with pytest.raises(grpc.RpcError) as exc:
                    buyer.invoke("acme-models/echo@1.0.0", payload)
                assert canary not in str(exc.value.details())  # type: ignore[attr-defined]
            backend.server.stop(0)
            with pytest.raises(grpc.RpcError) as exc:
                buyer.invoke("acme-models/echo@1.0.0", {"text": canary})
            assert canary not in str(exc.value.details())  # type: ignore[attr-defined]
        page = metrics_page(node)
        invokes = [line for line in page.splitlines() if line.startswith("broker_rpcs_total{")]
        assert any('method="/broker.v1.Broker/Invoke"' in line for line in invokes)
        assert canary not in page
    finally:
        node.terminate()
    log_text = node.log_path.read_text(errors="replace")
    assert canary not in log_text
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), f"canary found in {path}"
    invokes = [e for e in node.events() if e.get("event") == "rpc" and "Invoke" in str(e["method"])]
    assert len(invokes) == 4
    ok = [e for e in invokes if e["status"] == "OK"]
    assert len(ok) == 1
    assert ok[0]["tenant"] == "bank"
    assert ok[0]["model"] == "acme-models/echo@1.0.0"
    assert len(str(ok[0]["call_id"])) == 32
    assert isinstance(ok[0]["latency_ms"], float)


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common_name: str
) -> tuple[bytes, bytes]:
    import ipaddress  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_mutual_tls(tmp_path: Path) -> None:
    ca_key, ca = _make_ca()
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    server_key, server_cert = _issue(ca_key, ca, "broker")
    client_key, client_cert = _issue(ca_key, ca, "buyer-service")
    files = {
        "ca.pem": ca_pem,
        "server.key": server_key,
        "server.pem": server_cert,
        "client.key": client_key,
        "client.pem": client_cert,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    node = ServeProcess(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'broker.db'}",
        {
            "BROKER__SERVER__TLS__CERT_FILE": str(tmp_path / "server.pem"),
            "BROKER__SERVER__TLS__KEY_FILE": str(tmp_path / "server.key"),
            "BROKER__SERVER__TLS__CLIENT_CA_FILE": str(tmp_path / "ca.pem"),
        },
    )
    try:
        with node.client(
            "bank", "buyer", root_certificates=ca_pem, client_certificate=(client_key, client_cert)
        ) as client:
            assert list(client.list_models(timeout=10)) == []
        with node.client("bank", "buyer", root_certificates=ca_pem, max_attempts=1) as client:
            with pytest.raises(grpc.RpcError) as exc:
                list(client.list_models(timeout=5))
            assert exc.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        with (
            node.client("bank", "buyer", max_attempts=1) as client,
            pytest.raises(grpc.RpcError),
        ):
            list(client.list_models(timeout=5))
        # The operator's check speaks TLS too, with the client certificate the server asks for.
        health = [
            sys.executable,
            "-m",
            "broker.cli.main",
            "health",
            "--target",
            f"127.0.0.1:{node.port}",
        ]
        tls = ["--ca", str(tmp_path / "ca.pem")]
        mutual = [
            *tls,
            "--cert",
            str(tmp_path / "client.pem"),
            "--key",
            str(tmp_path / "client.key"),
        ]
        checked = subprocess.run(
            [*health, *mutual], check=False, capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stderr
        assert "status: SERVING" in checked.stdout
        assert "service: broker.v1.Broker" in checked.stdout
        for refused in ([*health, *tls], health):  # no client certificate; no TLS at all
            answer = subprocess.run(
                refused, check=False, capture_output=True, text=True, timeout=60
            )
            assert answer.returncode != 0
            assert "status: SERVING" not in answer.stdout
    finally:
        assert node.terminate() == 0
