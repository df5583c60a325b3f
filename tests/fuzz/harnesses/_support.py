"""What every harness shares: turning instrumentation on, the entry point, chunk splitting.

Instrumentation (atheris rewriting the bytecode of ``broker.*`` for coverage feedback) is on
only when the runner asks for it through ``BROKER_FUZZ_INSTRUMENT=1``, so the regression tests
import the same harness modules, uninstrumented and without needing atheris.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

INSTRUMENT_ENV = "BROKER_FUZZ_INSTRUMENT"


def instrumented() -> contextlib.AbstractContextManager[Any]:
    """Wrap the imports of the code under test: instruments ``broker.*`` when fuzzing."""
    if os.environ.get(INSTRUMENT_ENV) == "1":
        import atheris  # noqa: PLC0415 - atheris is a fuzzing-only dependency

        return atheris.instrument_imports(include=["broker"])  # type: ignore[no-any-return]
    return contextlib.nullcontext()


def main(fuzz_one: Callable[[bytes], None]) -> None:
    """Hand ``fuzz_one`` to libFuzzer with the command line's libFuzzer flags."""
    import atheris  # noqa: PLC0415

    from broker.logging import configure_logging  # noqa: PLC0415

    configure_logging("error")  # the code's debug and warning events would drown libFuzzer's
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()


def split(data: bytes) -> tuple[bytes, list[int]]:
    """Cut a fuzz input into a body and chunk sizes, so one input is also a chunking.

    The first byte ``n`` says how many of the next bytes are chunk sizes (``n % 16``, each
    ``0..255``); the rest is the body. Sizes are used in turn, cycling, to cut the body; a
    size of 0 gives an empty chunk (a stream may deliver one), so at least one byte moves per
    two chunks. With no sizes the body is one chunk.
    """
    if not data:
        return b"", []
    count = data[0] % 16
    sizes = list(data[1 : 1 + count])
    return data[1 + count :], sizes


def chunks(body: Any, sizes: list[int]) -> list[Any]:
    """``body`` (bytes or str) cut by ``sizes`` (see ``split``)."""
    if not sizes:
        return [body]
    out = []
    i = 0
    turn = 0
    while i < len(body):
        size = sizes[turn % len(sizes)]
        turn += 1
        out.append(body[i : i + size])
        if size == 0:  # an empty chunk, then at least one byte, so the loop ends
            size = 1
            out.append(body[i : i + 1])
        i += size
    return out
