"""HAProxy's rendered configuration: what it must say, and HAProxy itself accepts it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.cluster.balancer import (
    HEALTH_REPLY_SERVING,
    Backend,
    check_config,
    health_check_request,
    render_config,
)
from broker.cluster.launcher import ClusterSettings, replica_config, to_toml
from broker.cluster.tls import ensure_pki
from broker.config import Config
from tests.conftest import skip_or_fail


def _render(tmp_path: Path) -> str:
    pki = ensure_pki(tmp_path / "pki", 2)
    return render_config(
        front="127.0.0.1:50050",
        backends=[Backend(1, "127.0.0.1", 50061), Backend(2, "127.0.0.1", 50062)],
        pki=pki,
        stats_socket=tmp_path / "haproxy.sock",
    )


def test_rendered_config_verifies_replicas_and_checks_grpc_health(tmp_path: Path) -> None:
    text = _render(tmp_path)
    assert "bind 127.0.0.1:50050 proto h2" in text
    assert "server replica-1 127.0.0.1:50061 verifyhost replica-1" in text
    assert "server replica-2 127.0.0.1:50062 verifyhost replica-2" in text
    default_server = next(line for line in text.splitlines() if "default-server" in line)
    for part in ("ssl", "alpn h2", "verify required", str(tmp_path / "pki" / "ca.pem"), "crt "):
        assert part in default_server
    assert f"tcp-check send-binary {health_check_request().hex()}" in text
    assert f"tcp-check expect binary {HEALTH_REPLY_SERVING}" in text


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        skip_or_fail("haproxy is not installed (make system-deps)")
    config = tmp_path / "haproxy.cfg"
    config.write_text(_render(tmp_path))
    check_config(config)
    config.write_text(_render(tmp_path).replace("verify required", "verify sometimes"))
    with pytest.raises(ValueError, match="haproxy refuses"):
        check_config(config)


def test_the_health_request_is_one_http2_stream_with_an_empty_grpc_message() -> None:
    data = health_check_request()
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert b"/grpc.health.v1.Health/Check" in data
    assert data.endswith(bytes.fromhex("000005000100000001") + b"\0" * 5)


def test_replica_config_is_a_valid_broker_config_sharing_keys(tmp_path: Path) -> None:
    import tomllib  # noqa: PLC0415

    settings = ClusterSettings(root=tmp_path, overrides={"retention": {"batch_size": 7}})
    pki = ensure_pki(settings.pki_dir, 1)
    raw = tomllib.loads(to_toml(replica_config(settings, pki, 1, 50061)))
    config = Config.model_validate(raw)
    assert config.key_dir == (tmp_path / "keys").absolute()
    assert config.data_dir == (tmp_path / "replica-1").absolute()
    assert config.server.tls is not None
    assert config.server.tls.client_ca_file == pki.ca_cert.absolute()
    assert config.server.workers == 1 and config.auth.dev_issuer.enabled
    assert config.retention.batch_size == 7
    assert config.database.url.startswith("postgresql")
