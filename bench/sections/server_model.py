"""grpcio's synchronous thread-pool server against ``grpc.aio``, for the same echo backend.

The broker uses the synchronous server with 16 threads (``[server] max_workers``); this section
keeps that choice honest by measuring both server models on this machine, in the same run, with
the same load generator: closed-loop throughput and the p50 latency at a fixed offered load.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from bench import workload
from bench.load import Call, check_answers, closed_loop, open_loop
from bench.procs import spawn
from bench.sections import Section
from bench.settings import Settings
from bench.stats import Figure

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODELS = {"backend": "sync, 16 threads", "backend-aio": "grpc.aio"}


def run(settings: Settings) -> list[Figure]:
    """Both echo servers side by side, repeated; ratio aio/sync within each repeat."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-model-")))
        infer = workload.infer_request_bytes()
        calls = {
            role: Call(spawn(stack, workdir, role).target, MODEL_INFER, infer) for role in MODELS
        }
        rate = settings.rates[0]
        tput = {r: Figure(f"echo throughput, {d}", "calls/s") for r, d in MODELS.items()}
        p50 = {r: Figure(f"echo p50 @ {rate:g}/s, {d}", "ms") for r, d in MODELS.items()}
        ratio = Figure("echo throughput ratio sync/aio", "x", note="> 1: the sync server is faster")
        for _ in range(settings.repeat):
            got = {}
            for role, call in calls.items():
                result = closed_loop(
                    call,
                    concurrency=settings.concurrency,
                    duration=settings.duration,
                    warmup=settings.warmup,
                )
                check_answers([result], f"throughput {role}")
                got[role] = result.throughput
                tput[role].add(result.throughput)
                latency = open_loop(
                    call, rate=rate, duration=settings.latency_duration, warmup=settings.warmup
                )
                p50[role].add(latency.latency_ms(0.5))
            ratio.add(got["backend"] / got["backend-aio"])
        return [*tput.values(), ratio, *p50.values()]


SECTION = Section(
    key="server_model",
    title="Server model: grpcio sync (16 threads) vs grpc.aio, bare echo",
    requires=(),
    run=run,
)
