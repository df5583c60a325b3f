"""Instructions per Invoke under callgrind: a figure that the machine's load cannot move.

The parent (``count_instructions``) starts ``python -m bench.profile_callgrind CALLS WARMUP``
under callgrind with instrumentation off (``--instr-atstart=no``), so start-up (imports,
building the broker, the warm-up calls) runs at near native speed and is not counted. The child
builds the same in-process broker and backend as the profile (``bench.profile.serve``, without
the stage hooks), sends the warm-up calls, switches instrumentation on for its own process with
``callgrind_control -i on PID``, sends ``CALLS`` calls one at a time, and switches it off. The
backend is a separate process that valgrind does not follow, so the count is the broker's work
plus the in-process client's, which is the same on both sides of an A/B.

Two things that depend on wall time are held still for the count: the registry cache lasts the
whole run, and the audit checkpointer signs only once, during the warm-up (it signs at most
every 0.1 s of wall time, so under valgrind's slowness the number of checkpoints per call
would follow the machine's load); the count therefore leaves out checkpoint signing. What
remains is the threads' interleaving (GIL hand-overs, where a garbage collection lands).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
# The registry cache (2 s by default) would expire a number of times that depends on how slow
# valgrind runs, each expiry a registry query: under callgrind it lasts the whole run.
_SETTINGS = {"BROKER__REGISTRY__RESOLVE_CACHE_SECONDS": "3600"}
_TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)


def count_instructions(calls: int, warmup: int) -> dict[str, Any]:
    """Run the child under callgrind; instructions per call over ``calls`` calls."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--callgrind needs valgrind (with callgrind_control) on the PATH")
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.profile_callgrind",
            str(calls),
            str(warmup),
        ]
        started = time.monotonic()
        # A fixed hash seed: str hashes decide set and dict layouts, and with them some work.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, cwd=_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
        found = _TOTALS.search(out.read_bytes())
        if found is None:
            raise RuntimeError("callgrind wrote no totals")
        instructions = int(found.group(1))
    return {
        "calls": calls,
        "warmup": warmup,
        "instructions": instructions,
        "instructions_per_call": instructions // calls,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _instrument(state: str) -> None:
    """Switch callgrind's instrumentation of this process; waits until it has taken effect.

    Waiting blocks this thread only: callgrind picks the command up while grpc's own threads
    run, and a waiting thread executes no instructions (a busy wait here made the count vary
    by a few per cent between runs).
    """
    control = subprocess.Popen(  # noqa: S603 - valgrind's own tool, our own pid
        ["callgrind_control", "-i", state, str(os.getpid())],  # noqa: S607
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if control.wait(timeout=120) != 0:
        raise RuntimeError(f"callgrind_control -i {state} failed (not under callgrind?)")


def _child(calls: int, warmup: int) -> None:
    from bench.profile import serve  # noqa: PLC0415 - the child only
    from broker.audit.writer import AuditLog  # noqa: PLC0415

    # The checkpointer signs at most every 0.1 s of wall time, so how many checkpoints fall
    # in the counted calls depends on how fast valgrind runs that day (a checkpoint costs
    # about as much as a call). For the count only, it signs once (during the warm-up).
    defaults = AuditLog.__init__.__kwdefaults__
    assert defaults is not None and "checkpoint_gap" in defaults
    defaults["checkpoint_gap"] = 3600.0

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp:
        serving = serve(stack, Path(tmp), _SETTINGS)
        for _ in range(warmup):
            serving.invoke()
        gc.collect()
        _instrument("on")
        for _ in range(calls):
            serving.invoke()
        _instrument("off")


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
