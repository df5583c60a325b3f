"""Hostile HTTP/2 clients over plain sockets, for what no gRPC client library will send.

``h2`` frames the protocol and keeps its state machine honest; these helpers then misbehave on
purpose: open streams and never send their message, stop halfway through a frame, dribble the
connection preface, or vanish without closing their streams.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADERS = 0x1
_FLAG_END_STREAM = 0x1


def grpc_headers(port: int, method: str, token: str) -> list[tuple[str, str]]:
    """The request headers of a gRPC call to ``method`` (``/broker.v1.Broker/Invoke``, ...)."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", f"Bearer {token}"),
    ]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RawConnection:
    """One HTTP/2 connection driven by hand: ``open_streams`` sends HEADERS (and optionally the
    first bytes of a length-prefixed message) and nothing more; ``abandon`` closes the socket
    with every stream still open."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = connect(port)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.opened = 0
        self.reset_by_server = 0
        self.ended_by_server = 0
        self.statuses: list[str] = []

    def open_streams(
        self, count: int, method: str, token: str, *, partial_message: bytes = b""
    ) -> int:
        """Open up to ``count`` streams; as many as the server's stream limit allows. Returns how
        many were opened. ``partial_message`` is sent as each stream's only DATA (no END_STREAM)."""
        headers = grpc_headers(self.port, method, token)
        opened = 0
        for _ in range(count):
            try:
                stream_id = self.conn.get_next_available_stream_id()
                self.conn.send_headers(stream_id, headers)
                if partial_message:
                    self.conn.send_data(stream_id, partial_message)
            except h2.exceptions.TooManyStreamsError:
                break
            opened += 1
            if opened % 100 == 0:
                self.sock.sendall(self.conn.data_to_send())
        self.sock.sendall(self.conn.data_to_send())
        self.opened += opened
        return opened

    def read_for(self, seconds: float) -> None:
        """Read what the server sends for up to ``seconds`` (settings, resets, trailers)."""
        self.sock.settimeout(seconds)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.StreamReset):
                        self.reset_by_server += 1
                    elif isinstance(event, h2.events.TrailersReceived | h2.events.StreamEnded):
                        if isinstance(event, h2.events.TrailersReceived):
                            self.statuses.append(dict(event.headers).get("grpc-status", "?"))
                        else:
                            self.ended_by_server += 1
                    elif isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers).get("grpc-status")
                        if status is not None:  # trailers-only answer
                            self.statuses.append(status)
                pending = self.conn.data_to_send()
                if pending:
                    self.sock.sendall(pending)
        except (TimeoutError, h2.exceptions.ProtocolError, OSError):
            return

    @property
    def server_stream_limit(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    def abandon(self) -> None:
        """Vanish: no RST_STREAM, no GOAWAY, the socket just closes."""
        self.sock.close()


def headers_without_end(port: int, method: str, token: str) -> bytes:
    """The preface, empty SETTINGS, and a HEADERS frame whose block is never finished (no
    END_HEADERS, and the CONTINUATION never comes): the HTTP/2 flavour of slowloris."""
    encoder = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    ).encoder
    block = encoder.encode(grpc_headers(port, method, token))
    half = block[: max(1, len(block) // 2)]
    settings = struct.pack(">I", 0)[1:] + bytes([0x4, 0]) + struct.pack(">I", 0)
    frame_header = struct.pack(">I", len(half))[1:] + bytes([_FRAME_HEADERS, _FLAG_END_STREAM])
    return PREFACE + settings + frame_header + struct.pack(">I", 1) + half


def close_all(sockets: Sequence[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
