"""HAProxy in front of the replicas: its configuration, rendered from the cluster's layout, and
its process.

The front speaks plaintext HTTP/2 (gRPC) on ``front`` (loopback by default); each backend
server is a replica, reached over TLS with ALPN ``h2``, its certificate verified against the
cluster CA and its name (``replica-N``), and HAProxy presenting its own client certificate
(the replicas require one). Calls are spread per request (``balance roundrobin`` on an HTTP/2
backend: HAProxy multiplexes the streams of every client connection over its own connections to
the replicas), so one client channel reaches every replica.

Health: HAProxy 2.6 cannot put the five bytes of an empty gRPC message (four of them zero) in
an ``http-check send`` body: the configuration parser ends arguments at a NUL byte, and its
HTTP/2 check with an empty or log-format body never got an answer the replica accepted (tried
2026-12-07 with Debian's 2.6.12: "Layer7 invalid response"). So the check is a ``tcp-check``
that speaks the gRPC health protocol by hand over TLS + ALPN h2: the HTTP/2 preface, an empty
SETTINGS frame, a HEADERS frame for ``POST /grpc.health.v1.Health/Check`` (HPACK without
Huffman or dynamic table) and a DATA frame with the empty ``HealthCheckRequest``; then it waits
for the reply message (``00 00000002 08 0x``) and passes only on ``08 01`` (SERVING). A replica
that reports NOT_SERVING (its database is unreachable, or it is draining) leaves the rotation
after ``fall`` failed checks, ``inter`` apart, and comes back after ``rise`` good ones.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.cluster.settings import replica_name
from broker.cluster.tls import ClusterPki

HEALTH_PATH: Final = b"/grpc.health.v1.Health/Check"
_AUTHORITY: Final = b"localhost"
HEALTH_REPLY_ANY: Final = "0000000002080[12]"  # gRPC frame of a HealthCheckResponse{status}
HEALTH_REPLY_SERVING: Final = "00000000020801"  # ... with status = SERVING (1)


class HAProxyMissing(OSError):
    """The haproxy binary is not installed."""


def haproxy_binary() -> str:
    """The path of ``haproxy``; HAProxyMissing saying how to install it otherwise."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise HAProxyMissing(
            "haproxy is not installed: run `make system-deps` as root "
            "(or `apt-get install haproxy`)"
        )
    return found


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _literal(index: int, value: bytes) -> bytes:
    """HPACK literal header field without indexing, name from the static table (index < 15)."""
    return bytes([index, len(value)]) + value


def health_check_request() -> bytes:
    """The bytes of one gRPC ``Health/Check`` call for the server as a whole, as HTTP/2 frames.

    RFC 9113 connection preface and frames; RFC 7541 HPACK: 0x83 ``:method POST`` and 0x87
    ``:scheme https`` are indexed static entries, ``:path`` (4) and ``:authority`` (1) literals
    with an indexed name, ``content-type`` (31, so its 4-bit prefix overflows to 0x0f 0x10)
    and ``te`` literals.
    """
    headers = (
        b"\x83\x87"
        + _literal(4, HEALTH_PATH)
        + _literal(1, _AUTHORITY)
        + b"\x0f\x10"
        + bytes([16])
        + b"application/grpc"
        + b"\x00\x02te\x08trailers"
    )
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = _frame(0x4, 0, 0, b"")
    request_headers = _frame(0x1, 0x4, 1, headers)  # END_HEADERS
    empty_message = _frame(0x0, 0x1, 1, b"\x00" * 5)  # END_STREAM; uncompressed, length 0
    return preface + settings + request_headers + empty_message


@dataclass(frozen=True)
class Backend:
    """One replica as the balancer sees it."""

    index: int
    host: str
    port: int


def render_config(
    *,
    front: str,
    backends: list[Backend],
    pki: ClusterPki,
    stats_socket: Path,
    check_interval_ms: int = 1000,
    check_timeout_ms: int = 1000,
) -> str:
    """HAProxy's configuration for the cluster (see the module docstring)."""
    servers = "\n".join(
        f"    server {replica_name(b.index)} {b.host}:{b.port} verifyhost {replica_name(b.index)}"
        for b in backends
    )
    default_server = (
        f"default-server check inter {check_interval_ms}ms fall 2 rise 2 ssl alpn h2"
        f" ca-file {pki.ca_cert} crt {pki.balancer_bundle} verify required"
    )
    return f"""\
# Rendered by `broker cluster up` (broker/cluster/balancer.py); edits are overwritten.
global
    # Runtime API: `broker cluster status` reads each server's state here.
    stats socket {stats_socket} mode 600 level admin
    log stderr format short local0 notice
    # The replicas' certificates come from the cluster CA; no system CA is trusted for them.
    ssl-server-verify required

defaults
    mode http
    log global
    option log-health-checks
    timeout connect 2s
    # Long enough for a streamed answer; the broker enforces the caller's own deadline.
    timeout client 300s
    timeout server 300s
    timeout check {check_timeout_ms}ms

# Clients: plaintext HTTP/2 (gRPC has no HTTP/1 form). Keep it on loopback, or put TLS here
# (`bind ... ssl crt <file> alpn h2`) before exposing it.
frontend grpc
    bind {front} proto h2
    default_backend replicas

backend replicas
    balance roundrobin
    # Only a failed connection is retried (HAProxy's default retry-on conn-failure), on
    # another replica: nothing reached a replica then. A call cut later is never replayed.
    retries 2
    option redispatch 1
    # gRPC health over a raw HTTP/2 exchange (why: broker/cluster/balancer.py); passes only on
    # SERVING, so a replica that lost its database or is draining leaves the rotation.
    option tcp-check
    tcp-check connect ssl alpn h2
    tcp-check send-binary {health_check_request().hex()} comment grpc-health-check
    tcp-check expect rbinary {HEALTH_REPLY_ANY} comment health-reply
    tcp-check expect binary {HEALTH_REPLY_SERVING} comment serving
    # Every replica: TLS with ALPN h2, verified against the cluster CA and its name, HAProxy's
    # own client certificate (the replicas require one).
    {default_server}
{servers}
"""


def check_config(config_file: Path) -> None:
    """``haproxy -c``: ValueError with HAProxy's words if it refuses the configuration."""
    result = subprocess.run(  # noqa: S603 - fixed argv
        [haproxy_binary(), "-c", "-q", "-f", str(config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"haproxy refuses {config_file}:\n{result.stdout}{result.stderr}")


def server_states(stats_socket: Path, timeout: float = 2.0) -> dict[str, str]:
    """Server name -> HAProxy's status (``UP``, ``DOWN``, ``UP 1/2``...), from the runtime API."""
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(stats_socket))
        conn.sendall(b"show stat\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    name_at, server_at, status_at = (
        header.index("pxname"),
        header.index("svname"),
        header.index("status"),
    )
    states = {}
    for line in lines[1:]:
        row = line.split(",")
        if len(row) > status_at and row[name_at] == "replicas" and row[server_at] != "BACKEND":
            states[row[server_at]] = row[status_at]
    return states
