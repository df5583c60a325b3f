"""``WorkerStream``: one streamed answer of a sandbox worker, chunk by chunk, as it is generated.

A package streams by returning an iterator (a generator) when its payload asks for a stream;
the worker sends one ``{"chunk": {...}}`` frame per item, then ``{"end": {}}``, or the error
frame that ended it (``worker._stream``). This is the broker's side, where the worker cannot lie:

    frame                      what the stream does                          the worker
    ``chunk`` (an object)      yields it                                     busy
    ``end``                    stops (``completed``)                         free again
    ``ok`` as the first frame  ``answer``: the package did not stream        free again
    ``error``                  SandboxModelError, after the chunks yielded   free again
    ``error`` with ``limit``   SandboxLimitExceeded                          killed
    none before the deadline   SandboxTimeout (the deadline covers it all)   killed
    a frame over the cap       SandboxLimitExceeded ``frame``                killed
    more than the answer cap   SandboxLimitExceeded ``answer``               killed
    the worker died            its cause (memory, cpu, seccomp, crash)       dead
    ``close()`` before the end (nothing more is read)                        killed

The answer cap is the worker's ``max_frame_bytes``, counted over every frame of the stream with
its 4-byte header: a streamed answer can carry no more than a unary one, and the header bounds
the number of chunks too, so a package cannot make the broker read a gigabyte in small pieces.

**Why closing early kills the worker**: the package's generator is suspended in the middle of
its answer and its next frames are already on their way; reading them to the end could take
until the deadline (the buyer is gone), and a worker whose channel still holds another call's
frames cannot serve the next one. The pool sees a dead worker and replaces it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from broker.closing import ClosedOnExit
from broker.runtimes.sandbox.errors import SandboxCrashed
from sandbox.protocol import WorkerLimits


class StreamingWorker(Protocol):
    """What a stream uses of the worker it reads; ``launcher.Worker`` is the one that has it.

    These are the worker's own channel primitives (private to the sandbox's host side, and
    called only with the call lock held). Naming them here instead of importing ``Worker`` keeps
    the launcher above this module: the launcher makes streams, a stream never makes a worker.
    """

    limits: WorkerLimits
    _lock: threading.Lock

    def _receive(
        self, deadline: float, timeout: float, cap: int, limit: str = "frame"
    ) -> tuple[Any, int]: ...

    def _interpret(self, reply: Any) -> dict[str, Any]: ...

    def _fail(self, reason: str) -> None: ...


class WorkerStream(Iterator[dict[str, Any]], ClosedOnExit):
    """The chunks of one streamed answer; made by ``Worker.stream``, which hands it the lock.

    The stream holds the worker's call lock from the request until the answer ends (or the
    stream is closed), so no other call interleaves its frames. Iterate and close it in one
    thread; to stop it from another, kill the worker (``Worker.kill``), as the pool's
    cancellation does: the reader then sees the worker's death.
    """

    def __init__(self, worker: StreamingWorker, deadline: float, timeout: float) -> None:
        self._worker = worker
        self._deadline = deadline
        self._timeout = timeout
        self._room = worker.limits.max_frame_bytes
        self._open = True
        self.answer: dict[str, Any] | None = None
        """The package's one-object answer, when it answered without streaming."""
        self.chunks = 0
        """How many chunks have been yielded so far."""
        self.completed = False
        """True once the worker ended the answer properly."""
        self._pending = self._step(first=True)

    def __iter__(self) -> WorkerStream:
        return self

    def __next__(self) -> dict[str, Any]:
        chunk, self._pending = self._pending, None
        if chunk is None:
            if not self._open:
                raise StopIteration
            chunk = self._step(first=False)
            if chunk is None:
                raise StopIteration
        self.chunks += 1
        return chunk

    def close(self) -> None:
        """Stop reading; before the end of the answer this kills the worker (see module doc)."""
        if self._open:
            self._worker._fail("stream abandoned mid-answer")
            self._release()

    def _step(self, *, first: bool) -> dict[str, Any] | None:
        """Read the next frame: a chunk, or ``None`` once the answer ended (the lock released)."""
        try:
            chunk = self._settle(self._read(), first=first)
        except BaseException:
            self._release()
            raise
        if chunk is None:
            self._release()
        return chunk

    def _settle(self, reply: Any, *, first: bool) -> dict[str, Any] | None:
        """What one frame means: a chunk, the end (``None``), or the error it raises."""
        if not isinstance(reply, dict):
            reply = {}
        chunk = reply.get("chunk")
        if isinstance(chunk, dict):
            return chunk
        if "end" in reply:
            self.completed = True
            return None
        if first and "ok" in reply:
            self.answer = self._worker._interpret(reply)
            self.completed = True
            return None
        if "error" in reply:
            self._worker._interpret(reply)  # raises the error the frame names
        self._worker._fail("protocol")
        raise SandboxCrashed("worker sent a frame that does not belong in a stream")

    def _read(self) -> Any:
        cap = self._worker.limits.max_frame_bytes
        limit = "frame" if self._room >= cap else "answer"
        reply, size = self._worker._receive(
            self._deadline, self._timeout, max(min(cap, self._room), 0), limit
        )
        self._room -= size
        return reply

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._worker._lock.release()
