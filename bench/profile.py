"""``python -m bench --profile``: the CPU of one Invoke, stage by stage, in µs per call.

The real broker (``build_server``, SQLite in a temporary directory, the development issuer, as
``bench.servers`` builds it) runs in this process and calls the real OIP echo backend (its own
process, ``bench.servers backend``) with the bench's 2 KB workload. Calls are sent one at a
time over loopback gRPC from this process, so every CPU cycle the process spends while a call
is in flight belongs to that call. ``bench.profile_stages`` wraps the stage functions for the
length of the profile only and attributes CPU to each; the broker's code has no timing in it.

Figures are medians over ``--calls`` calls after a warm-up (the mean is in the JSON too).
"Outside the stages" is the process CPU of a call that no hook saw: the in-process client (the
CPU of its own thread is shown apart; a deployed broker does not pay it), grpcio's server
(HTTP/2, (de)serialisation, its thread hand-over), the boundary interceptor and its ``rpc`` log
event, and the hooks' own clock reads.

``--callgrind`` runs the same calls under ``valgrind --tool=callgrind`` without the hooks
(``bench.profile_callgrind``) and reports instructions per call, which do not depend on what else
the machine is doing: the figure to A/B a change with.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc

from bench import workload
from bench.machine import describe_machine
from bench.procs import spawn
from bench.profile_floors import DEFAULT_CALLS as FLOOR_CALLS
from bench.profile_floors import floor_of, measure_floors
from bench.profile_stages import STAGES, Row, StageRecorder, installed
from bench.topology import INVOKE, _broker_env, register_workload

PROFILE_JSON = Path(__file__).resolve().parent / "profile.json"
DEFAULT_CALLS = 1000
DEFAULT_WARMUP = 100
OUTSIDE = "outside the stages"


@dataclass
class Serving:
    """A broker built in this process, serving the workload's model on an echo backend."""

    invoke: Callable[[], bytes]
    stop: Callable[[], None]
    backend_target: str
    database: Path


#: Set by ``--metrics``: the profiled broker serves its Prometheus page (records every series).
METRICS_ENV = "BENCH_BROKER_METRICS"


def observed_settings() -> dict[str, str]:
    """The broker settings ``--metrics`` and ``--aio`` add (read from the environment: the
    callgrind child is another process)."""
    settings = {}
    if os.environ.get(METRICS_ENV) == "1":
        settings["BROKER__METRICS__LISTEN"] = "127.0.0.1:0"
    if os.environ.get("BROKER__SERVER__AIO") is not None:  # set by --aio
        settings["BROKER__SERVER__AIO"] = os.environ["BROKER__SERVER__AIO"]
    return settings


@functools.cache
def _devnull() -> TextIO:
    """One /dev/null for the process's life: the broker's loggers keep the file they were
    first used with (structlog's ``cache_logger_on_first_use``), so a second profile in the same
    process (``make bench``'s repeats of the stages section) must find it still open."""
    return Path(os.devnull).open("w", encoding="utf-8")


def serve(
    stack: contextlib.ExitStack, workdir: Path, settings: dict[str, str] | None = None
) -> Serving:
    """Start the backend process and an in-process broker; register the model; mint a token.

    ``settings``: ``BROKER__...`` variables on top of the bench broker's own.
    """
    from broker.config import load_config  # noqa: PLC0415 - after the hooks are in
    from broker.logging import configure_logging  # noqa: PLC0415
    from broker.server.app import build_server  # noqa: PLC0415

    backend = spawn(stack, workdir, "backend")
    extra = {**(settings or {}), **observed_settings()}
    config = load_config(None, {**_broker_env(workdir / "broker"), **extra})
    # The broker logs at its configured level, as in production, into /dev/null: the log
    # events cost what they cost, and the table stays readable.
    with contextlib.redirect_stderr(_devnull()):
        configure_logging(config.logging.level, json_output=config.logging.json_output)
    server = build_server(config)
    server.start()
    stack.callback(server.stop, 1.0)
    target = f"127.0.0.1:{server.port}"
    buyer = register_workload(config, target, backend.target)
    channel = stack.enter_context(grpc.insecure_channel(target))
    method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(INVOKE)
    request = workload.invoke_request_bytes()
    metadata = (("authorization", f"Bearer {buyer}"),)

    def invoke() -> bytes:
        answer: bytes = method(request, timeout=120, metadata=metadata)
        return answer

    return Serving(
        invoke, lambda: server.stop(1.0), backend.target, workdir / "broker" / "broker.db"
    )


def measure(calls: int, warmup: int) -> dict[str, Any]:
    """Profile ``calls`` sequential Invokes; the document written to ``profile.json``."""
    recorder = StageRecorder()
    samples: list[dict[Row, tuple[int, int]]] = []
    totals: list[int] = []
    clients: list[int] = []  # the CPU of this (the client's) thread per call
    with (
        installed(recorder),
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp,
    ):
        serving = serve(stack, Path(tmp))
        for _ in range(warmup):
            serving.invoke()
        gc.collect()
        recorder.take()
        started = time.process_time_ns()
        for _ in range(calls):
            before, client = time.process_time_ns(), time.thread_time_ns()
            serving.invoke()
            clients.append(time.thread_time_ns() - client)
            totals.append(time.process_time_ns() - before)
            samples.append(recorder.take())
        loop_ns = time.process_time_ns() - started
        floors = measure_floors(serving.backend_target, serving.database, min(calls, FLOOR_CALLS))
    return {
        "machine": describe_machine(),
        "settings": {"calls": calls, "warmup": warmup},
        "unit": "µs of CPU per call (median over calls; mean beside it)",
        "stages": _stages(samples, totals, clients),
        "total_mean_us": round(loop_ns / calls / 1000, 1),
        "floors": floors,
    }


def _stages(
    samples: list[dict[Row, tuple[int, int]]], totals: list[int], clients: list[int]
) -> dict[str, Any]:
    rows = sorted({row for sample in samples for row in sample}, key=_order)
    out: dict[str, Any] = {}
    staged = [0] * len(samples)
    for stage in dict.fromkeys(row[0] for row in rows):
        parts = [row for row in rows if row[0] == stage]
        thread = [sum(s.get(r, (0, 0))[0] for r in parts) for s in samples]
        process = [sum(s.get(r, (0, 0))[1] for r in parts) for s in samples]
        staged = [a + b for a, b in zip(staged, process, strict=True)]
        out[stage] = {
            **_figure(thread, process),
            "parts": {
                r[1]: _figure(
                    [s.get(r, (0, 0))[0] for s in samples], [s.get(r, (0, 0))[1] for s in samples]
                )
                for r in parts
            },
        }
    outside = [total - inside for total, inside in zip(totals, staged, strict=True)]
    rest = [o - c for o, c in zip(outside, clients, strict=True)]
    out[OUTSIDE] = {
        **_figure(None, outside),
        "parts": {
            "in-process client (its own thread)": _figure(clients, clients),
            "gRPC server, interceptor, rpc log, hooks": _figure(None, rest),
        },
    }
    out["total"] = _figure(None, totals)
    return out


def _order(row: Row) -> tuple[int, str]:
    stage = row[0]
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), row[1])


def _figure(thread: list[int] | None, process: list[int]) -> dict[str, float | None]:
    def us(values: list[int] | None, how: Callable[[list[int]], float]) -> float | None:
        return None if values is None else round(how(values) / 1000, 1)

    return {
        "thread_us": us(thread, statistics.median),
        "process_us": us(process, statistics.median),
        "thread_mean_us": us(thread, statistics.fmean),
        "process_mean_us": us(process, statistics.fmean),
    }


def format_table(document: dict[str, Any]) -> str:
    """The stages as an aligned table: median thread and process CPU per call, in µs, with the
    floor of the stages that have one (``bench.profile_floors``), then the floors' summary."""
    calls = document["settings"]["calls"]
    floors = document.get("floors", {}).get("floors", {})
    lines = [
        f"== profile of one Invoke: µs of CPU per call, median of {calls} calls",
        f"{'stage / part':<40} {'thread':>9} {'process':>9} {'mean':>9} {'floor':>9}",
        "-" * 80,
    ]

    def line(name: str, figure: dict[str, Any], floor: float | None) -> str:
        thread = "" if figure["thread_us"] is None else f"{figure['thread_us']:,.1f}"
        bound = "" if floor is None else f"{floor:,.1f}"
        return (
            f"{name:<40} {thread:>9} {figure['process_us']:>9,.1f}"
            f" {figure['process_mean_us']:>9,.1f} {bound:>9}"
        )

    for stage, figure in document["stages"].items():
        if stage == "total":
            lines.append("-" * 80)
        lines.append(line(stage, figure, floor_of(floors, stage, None)))
        parts = figure.get("parts", {})
        if len(parts) > 1:
            lines.extend(
                line(f"    {part}", f, floor_of(floors, stage, part)) for part, f in parts.items()
            )
    lines.append(f"process CPU of the loop / calls: {document['total_mean_us']:,.1f} µs")
    if floors:
        lines.append(_floors_summary(document["floors"]))
    callgrind = document.get("callgrind")
    if callgrind:
        lines.append(
            f"callgrind: {callgrind['instructions_per_call']:,} instructions per call "
            f"({callgrind['calls']} calls)"
        )
    return "\n".join(lines)


def _floors_summary(floors: dict[str, Any]) -> str:
    """The floors one call pays, and the CPU ratio to a bare proxy they alone imply."""
    named = floors["floors"].items()
    paid = " + ".join(
        f"{name} {f['us']:,.1f}" + (f" x{f['times_per_call']}" if f["times_per_call"] > 1 else "")
        for name, f in named
        if f["times_per_call"]
    )
    shown = "; ".join(f"{name} {f['us']:,.1f}" for name, f in named if not f["times_per_call"])
    return (
        f"floors paid by one call: {paid} = {floors['sum_per_call_us']:,.1f} µs; a bare proxy's "
        f"{floors['proxy_floor_us']:,.1f} µs: no broker on this stack goes under "
        f"{floors['lower_bound_ratio']:.2f}x the proxy's CPU (target 1.25x)"
        + (f"\nfor comparison, not paid as such: {shown}" if shown else "")
    )


def run(calls: int | None, warmup: int | None, *, callgrind: bool, output: Path) -> int:
    """Run the profile (or the callgrind count), print the table, write ``output``."""
    if callgrind:
        from bench.profile_callgrind import count_instructions  # noqa: PLC0415

        document: dict[str, Any] = {
            "machine": describe_machine(),
            "callgrind": count_instructions(calls or 20, warmup if warmup is not None else 5),
        }
        print(
            f"callgrind: {document['callgrind']['instructions_per_call']:,} instructions per "
            f"Invoke ({document['callgrind']['calls']} calls)"
        )
    else:
        document = measure(calls or DEFAULT_CALLS, DEFAULT_WARMUP if warmup is None else warmup)
        print(format_table(document))
    output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.profile``: the same as ``python -m bench --profile``."""
    from bench.cli import main as bench_main  # noqa: PLC0415

    return bench_main(["--profile", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
