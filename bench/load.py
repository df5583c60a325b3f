"""The load generator: grpc.aio clients sending pre-serialised bytes, closed and open loop.

Requests are serialised once and sent as raw bytes, and answers are not parsed, so the client's
own cost is the same small amount for the direct, proxy and broker paths and does not blur the
difference between them (the three share 2 cores with the client).

- **Closed loop** (throughput at saturation): ``concurrency`` callers each send their next call
  as soon as the previous one answers, for ``duration`` seconds.
- **Open loop** (latency at an offered load): calls are scheduled at a fixed rate whatever the
  answers do, and each latency is measured from the call's *scheduled* time, so a stall delays
  every call queued behind it and shows in p99 (no coordinated omission).
- **Fixed count**: exactly ``count`` calls, for CPU per call from /proc.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from bench.stats import percentile

CALL_TIMEOUT = 10.0
CONNECTIONS = 8  # client connections per load (see ``_channel``)


@dataclass(frozen=True)
class Call:
    """One kind of call: where, which method, the request bytes and the metadata."""

    target: str
    method: str
    request: bytes
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    """What one run of load produced: answered calls, failures, latencies and the time taken."""

    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def throughput(self) -> float:
        """Answered calls per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def latency_ms(self, fraction: float) -> float:
        """A latency percentile in milliseconds."""
        return percentile(sorted(self.latencies), fraction) * 1000


def closed_loop(call: Call, *, concurrency: int, duration: float, warmup: float) -> LoadResult:
    """Throughput with ``concurrency`` callers back to back for ``duration`` seconds."""
    return asyncio.run(_closed(call, concurrency, duration, warmup))


def open_loop(call: Call, *, rate: float, duration: float, warmup: float) -> LoadResult:
    """Latencies of calls offered at ``rate`` per second for ``duration`` seconds."""
    return asyncio.run(_open(call, rate, duration, warmup))


def fixed_count(call: Call, *, count: int, concurrency: int) -> LoadResult:
    """Exactly ``count`` calls from ``concurrency`` callers (no warm-up: the caller warms up)."""
    return asyncio.run(_count(call, count, concurrency))


async def _closed(call: Call, concurrency: int, duration: float, warmup: float) -> LoadResult:
    async with _channel(call) as send:
        await _warm(send, warmup, concurrency)
        result = LoadResult()
        start = time.perf_counter()
        stop_at = start + duration

        async def caller() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                error = await send()
                t1 = time.perf_counter()
                if t1 > stop_at:  # only calls that finished inside the window count
                    return
                _record(result, error, t1 - t0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        result.elapsed = duration
        return result


async def _open(call: Call, rate: float, duration: float, warmup: float) -> LoadResult:
    async with _channel(call) as send:
        await _warm(send, warmup, 4)
        result = LoadResult()
        count = int(rate * duration)
        start = time.perf_counter() + 0.01

        async def one(scheduled: float) -> None:
            error = await send()
            _record(result, error, time.perf_counter() - scheduled)

        tasks = []
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        result.elapsed = time.perf_counter() - start
        return result


async def _count(call: Call, count: int, concurrency: int) -> LoadResult:
    async with _channel(call) as send:
        result = LoadResult()
        remaining = [count]
        start = time.perf_counter()

        async def caller() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                error = await send()
                _record(result, error, time.perf_counter() - t0)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - start
        return result


class _channel:  # noqa: N801 - reads as a function at the call site
    """``CONNECTIONS`` aio channels and a ``send()`` that makes one call on the next of them.

    Each channel has a connection of its own (a local subchannel pool; channels to one target
    otherwise share one), as several client instances would: a server of several processes
    behind one port (the broker's ``[server] workers``) gets connections, not calls, spread
    over its processes. The same for every path, so a, b and c see the same client.
    """

    def __init__(self, call: Call) -> None:
        self._call = call
        self._channels = [
            grpc.aio.insecure_channel(call.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]

    async def __aenter__(self) -> _Sender:
        # No serializers: raw bytes.
        stubs = [channel.unary_unary(self._call.method) for channel in self._channels]
        return _Sender(stubs, self._call)

    async def __aexit__(self, *exc_info: object) -> None:
        for channel in self._channels:
            await channel.close()


class _Sender:
    def __init__(self, stubs: list[grpc.aio.UnaryUnaryMultiCallable], call: Call) -> None:
        self._stubs = itertools.cycle(stubs)
        self._request = call.request
        self._metadata = call.metadata

    async def __call__(self) -> str:
        try:
            stub = next(self._stubs)
            await stub(self._request, timeout=CALL_TIMEOUT, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return ""


async def _warm(send: _Sender, seconds: float, concurrency: int) -> None:
    """Connect and warm caches (JIT-less Python still has lazy imports and pools)."""
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            await send()

    await asyncio.gather(*(caller() for _ in range(concurrency)))


def _record(result: LoadResult, error: str, latency: float) -> None:
    if error:
        result.errors += 1
        result.first_error = result.first_error or error
    else:
        result.ok += 1
        result.latencies.append(latency)


def check_answers(results: Sequence[LoadResult], what: str) -> None:
    """Fail loudly if a run had errors: a figure over failed calls would be a lie."""
    for result in results:
        if result.errors:
            raise RuntimeError(f"{what}: {result.errors} calls failed, first: {result.first_error}")
