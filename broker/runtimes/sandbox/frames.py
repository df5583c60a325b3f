"""Length-prefixed frames on the worker channel: 4-byte big-endian length, then a JSON body.

This module only frames bytes; each side brings its own JSON codec (the broker ``orjson``, the
worker the standard library's ``json``, which imports in a fraction of orjson's start-up time).
The reader checks the announced length against a cap *before* it allocates anything, so a worker
that announces a 1 GiB answer costs the broker four bytes of reading, not a gigabyte of memory.
"""

from __future__ import annotations

import socket
import struct
import time

HEADER = struct.Struct(">I")


class FrameTooLargeError(Exception):
    """The peer announced (or we were about to send) a frame larger than the agreed cap."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the cap of {cap} bytes")
        self.size = size
        self.cap = cap


class ChannelClosedError(EOFError):
    """The peer closed the channel, possibly in the middle of a frame."""


def pack(body: bytes, cap: int) -> bytes:
    """Prefix ``body`` with its length, refusing a body larger than ``cap``."""
    if len(body) > cap:
        raise FrameTooLargeError(len(body), cap)
    return HEADER.pack(len(body)) + body


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame before the deadline")
            sock.settimeout(remaining)
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ChannelClosedError(f"channel closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


def recv(sock: socket.socket, cap: int, deadline: float | None = None) -> bytes:
    """Read one frame's body; the announced length is checked against ``cap`` first.

    With a ``deadline`` (a ``time.monotonic()`` value) the whole frame must arrive before it,
    so a worker that drips one byte at a time cannot stretch the caller's deadline.
    """
    (size,) = HEADER.unpack(_recv_exactly(sock, HEADER.size, deadline))
    if size > cap:
        raise FrameTooLargeError(size, cap)
    return _recv_exactly(sock, size, deadline)
