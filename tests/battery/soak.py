"""``make soak``: a bounded mixed load on a real broker, and its resource curves (issue 16, 4).

One ``broker serve`` process (SQLite by default, ``--database-url`` for PostgreSQL) with a fake
OIP backend, a fake OpenAI-compatible vendor and, where this host can build the sandbox, a
sandboxed model package. ``--callers`` threads send, in turn: Invoke (remote model), InvokeStream
(chat model), Preview, ListModels, the vendor's ListVendorModels, an auditor's QueryEntries
page, and Invoke of the sandboxed model. Every ``--interval`` seconds the sampler reads the
broker's processes from the kernel (RSS, open descriptors, threads, children) and its /metrics
page (audit queue depth, sandbox workers).

At the end a least-squares line is fitted to each curve over the second half of the run (the
first half is warm-up: caches, pools, allocator arenas), and its slope must stay below the bound
in ``BOUNDS``; the curves go to ``soak.csv`` and the figures to ``soak.json`` in ``--out`` (by
default the node's data directory, ``battery-figures/``). Answered calls are then checked
against the audit log: each has its intent and outcome. The exit status is 0 only if every
bound held, no call failed and the log is complete.

    make soak                                  # SOAK_SECONDS=600 by default, in var/soak/
    make soak SOAK_SECONDS=3600                # the documented long run
    python -m tests.battery.soak --seconds 120 --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import orjson

from broker._proto.broker.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    models_pb2,
    registry_pb2,
    registry_pb2_grpc,
)
from broker.packages.store import PackageStore
from broker.runtimes.sandbox.probe import sandbox_support
from tests.battery.node import MIB, Sample, audit_gaps, audit_rows, sample, start_node
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import FakeBackend, echo_model, start_fake_backend
from tests.integration.test_serve_process import ServeProcess

ECHO_PACKAGE = Path(__file__).resolve().parents[1] / "sandbox" / "echo_pkg"
MODEL = "acme-models/echo@1.0.0"
CHAT_MODEL = "chat-vendor/fake-chat@1.0.0"
SANDBOX_MODEL = "acme-models/sandboxed-echo@1.0.0"
TOKEN_REUSE_S = 300.0

# Largest slope (units per second) each curve may keep over the second half of a run. A leak
# of 2 kB per call at the ~30 calls/s this load makes on a busy 2-core machine is 60 KiB/s; a
# descriptor or thread leaked every 30 s is 0.033/s. A short run's slope is noisier, so these
# catch gross leaks in CI's minute and slow ones in the documented hour.
BOUNDS: dict[str, float] = {
    "rss_bytes": 48 * 1024,
    "open_fds": 0.05,
    "threads": 0.05,
    "children": 0.02,
    "audit_queue_depth": 0.5,
    "sandbox_workers": 0.02,
}
# Growth over the second half that is noise, not a trend: the counts move with the connections
# and calls open at the instant of a sample (each streamed call opens and closes a connection to
# its vendor), so a short run may fit a steep line through a few descriptors' wobble. A curve
# fails only if its fitted growth over the second half exceeds both ``BOUNDS`` x the half's
# span and this floor; in an hour's run the floor is far below the bound and changes nothing.
NOISE_FLOOR: dict[str, float] = {
    "rss_bytes": 16 * 1024 * 1024,
    "open_fds": 8,
    "threads": 4,
    "children": 2,
    "audit_queue_depth": 50,
    "sandbox_workers": 1,
}


@dataclasses.dataclass
class Tally:
    """What the callers did: answered call ids (Invoke and stream summaries), counts by kind,
    and every failure as ``kind: CODE message``."""

    answered: list[str] = dataclasses.field(default_factory=list)
    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def ok(self, kind: str, call_id: str = "") -> None:
        with self.lock:
            self.counts[kind] += 1
            if call_id:
                self.answered.append(call_id)

    def failed(self, kind: str, exc: grpc.RpcError) -> None:
        with self.lock:
            self.failures.append(f"{kind}: {exc.code().name} {exc.details()}")  # type: ignore[attr-defined]


class Load:
    """Callers that go round the kinds of call until told to stop."""

    def __init__(self, node: ServeProcess, callers: int, *, sandbox: bool) -> None:
        self.node = node
        self.tally = Tally()
        self._tokens: dict[tuple[str, str], tuple[float, str]] = {}
        self._tokens_lock = threading.Lock()
        self._stop = threading.Event()
        self._kinds: list[Callable[[grpc.Channel], None]] = [
            self._invoke,
            self._stream,
            self._preview,
            self._list_models,
            self._vendor_models,
            self._audit_page,
        ]
        if sandbox:
            self._kinds.append(self._sandbox)
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(callers)
        ]

    def _meta(self, tenant: str, role: str) -> tuple[tuple[str, str], ...]:
        """A bearer token per tenant and role, minted again every five minutes, as a real
        client keeps its token (a fresh token per call would only fill the verified-token
        cache, whose growth to its bound would read as a leak)."""
        now = time.monotonic()
        with self._tokens_lock:
            minted = self._tokens.get((tenant, role))
            if minted is None or now - minted[0] > TOKEN_REUSE_S:
                token = self.node.issuer.mint(
                    subject=f"{tenant}-svc", tenant=tenant, roles=[role], ttl_seconds=900
                )
                minted = self._tokens[(tenant, role)] = (now, token)
        return (("authorization", f"Bearer {minted[1]}"),)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, seed: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.node.port}") as channel:
            turn = seed
            while not self._stop.is_set():
                kind = self._kinds[turn % len(self._kinds)]
                turn += 1
                try:
                    kind(channel)
                except grpc.RpcError as exc:
                    self.tally.failed(kind.__name__.strip("_"), exc)
                    time.sleep(0.05)

    def _invoke(self, channel: grpc.Channel) -> None:
        reply = broker_pb2_grpc.BrokerStub(channel).Invoke(
            broker_pb2.InvokeRequest(model=MODEL, json=b'{"text": "soak"}'),
            metadata=self._meta("bank", "buyer"),
            timeout=30,
        )
        self.tally.ok("invoke", reply.call_id)

    def _sandbox(self, channel: grpc.Channel) -> None:
        reply = broker_pb2_grpc.BrokerStub(channel).Invoke(
            broker_pb2.InvokeRequest(model=SANDBOX_MODEL, json=b'{"name": "Ada"}'),
            metadata=self._meta("bank", "buyer"),
            timeout=60,
        )
        self.tally.ok("sandbox", reply.call_id)

    def _stream(self, channel: grpc.Channel) -> None:
        request = broker_pb2.InvokeRequest(
            model=CHAT_MODEL,
            json=orjson.dumps({"messages": [{"role": "user", "content": "hello there"}]}),
        )
        stub = broker_pb2_grpc.BrokerStub(channel)
        for message in stub.InvokeStream(request, metadata=self._meta("bank", "buyer"), timeout=30):
            if message.WhichOneof("part") == "summary":
                self.tally.ok("stream", message.summary.call_id)

    def _preview(self, channel: grpc.Channel) -> None:
        broker_pb2_grpc.BrokerStub(channel).Preview(
            broker_pb2.PreviewRequest(model=MODEL, json=b'{"text": "soak"}'),
            metadata=self._meta("bank", "buyer"),
            timeout=30,
        )
        self.tally.ok("preview")

    def _list_models(self, channel: grpc.Channel) -> None:
        broker_pb2_grpc.BrokerStub(channel).ListModels(
            broker_pb2.ListModelsRequest(), metadata=self._meta("bank", "buyer"), timeout=30
        )
        self.tally.ok("list_models")

    def _vendor_models(self, channel: grpc.Channel) -> None:
        registry_pb2_grpc.RegistryStub(channel).ListVendorModels(
            registry_pb2.ListVendorModelsRequest(),
            metadata=self._meta("acme-models", "vendor"),
            timeout=30,
        )
        self.tally.ok("vendor_models")

    def _audit_page(self, channel: grpc.Channel) -> None:
        entries = audit_pb2_grpc.AuditStub(channel).QueryEntries(
            audit_pb2.QueryEntriesRequest(page_size=20),
            metadata=self._meta("ops", "auditor"),
            timeout=30,
        )
        for _ in entries:
            pass
        self.tally.ok("audit_query")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, value)`` points (0 for fewer than 3 or a flat time axis)."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return 0.0
    fit = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    return float(fit.slope)


def analyse(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Per curve: first, last, max, the slope over the second half, and the bound it must stay
    under (``BOUNDS``, or the noise floor spread over the half's span, whichever is larger)."""
    half = samples[len(samples) // 2 :]
    span = max(half[-1].t - half[0].t, 1.0)
    result: dict[str, dict[str, float]] = {}
    for name, bound in BOUNDS.items():
        values = [float(getattr(s, name)) for s in samples]
        result[name] = {
            "first": values[0],
            "last": values[-1],
            "max": max(values),
            "slope_per_s_second_half": slope([(s.t, float(getattr(s, name))) for s in half]),
            "bound_per_s": max(bound, NOISE_FLOOR[name] / span),
        }
    return result


def _chat_model(base_url: str) -> models_pb2.Model:
    return models_pb2.Model(
        name="fake-chat",
        version="1.0.0",
        runtime=models_pb2.RUNTIME_OPENAI_HTTP,
        endpoint=models_pb2.Endpoint(target=base_url, remote_model="fake"),
        fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
    )


def _sandbox_model(digest: str) -> models_pb2.Model:
    return models_pb2.Model(
        name="sandboxed-echo",
        version="1.0.0",
        runtime=models_pb2.RUNTIME_SANDBOX,
        package_digest=digest,
        fields=[models_pb2.FieldSpec(path="/name", type="string", labels=["pii.name"])],
    )


@contextmanager
def soak_node(
    data_dir: Path, database_url: str
) -> Iterator[tuple[ServeProcess, FakeBackend, FakeOpenAI, bool]]:
    """The node, its fake vendors and models; whether a sandboxed model is among them."""
    backend, vendor = start_fake_backend(), start_fake_openai()
    vendor.split = lambda text: [text[:2], text[2:]]
    sandbox = not sandbox_support()
    node = start_node(data_dir, database_url)
    try:
        with node.client("acme-models", "vendor") as client:
            client.register_model(echo_model(backend.target))
            if sandbox:
                digest = PackageStore(data_dir).add(ECHO_PACKAGE).digest
                client.register_model(_sandbox_model(digest))
        with node.client("chat-vendor", "vendor") as client:
            client.register_model(_chat_model(vendor.base_url))
        yield node, backend, vendor, sandbox
    finally:
        node.terminate()
        backend.server.stop(0)
        vendor.stop()


def run_soak(
    seconds: float,
    data_dir: Path,
    database_url: str,
    *,
    callers: int = 4,
    interval: float = 1.0,
    out: Path | None = None,
    warmup: float = 0.0,
) -> dict[str, object]:
    """Run the load for ``seconds``, sampling every ``interval``; return and write the figures.

    ``warmup``: seconds of load before the first sample, for short runs, whose second half
    would otherwise still hold the call pools' growth (threads, each with its database
    connection) that a long run leaves in its first minute.
    """
    out = out or data_dir / "battery-figures"
    samples: list[Sample] = []
    with soak_node(data_dir, database_url) as (node, _, _, sandbox):
        load = Load(node, callers, sandbox=sandbox)
        load.start()
        time.sleep(warmup)
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                samples.append(sample(node, elapsed))
                time.sleep(max(0.0, interval - (time.monotonic() - started - elapsed)))
        finally:
            load.stop()
        samples.append(sample(node, time.monotonic() - started))
    rows = audit_rows(database_url)
    gaps = audit_gaps(rows, load.tally.answered)
    curves = analyse(samples)
    over = {
        name: figures
        for name, figures in curves.items()
        if figures["slope_per_s_second_half"] > figures["bound_per_s"]
    }
    figures: dict[str, object] = {
        "seconds": round(samples[-1].t, 1),
        "warmup_seconds": warmup,
        "callers": callers,
        "sandbox_model": sandbox,
        "database": database_url.split(":", 1)[0],
        "calls": dict(load.tally.counts),
        "failures": load.tally.failures[:20],
        "failure_count": len(load.tally.failures),
        "audit_entries": len(rows),
        "audit_gaps": gaps,
        "rss_mib": {
            "first": round(samples[0].rss_bytes / MIB, 1),
            "last": round(samples[-1].rss_bytes / MIB, 1),
        },
        "curves": curves,
        "over_bound": sorted(over),
    }
    out.mkdir(parents=True, exist_ok=True)
    with (out / "soak.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        fields = [f.name for f in dataclasses.fields(Sample)]
        writer.writerow(fields)
        writer.writerows([getattr(s, f) for f in fields] for s in samples)
    (out / "soak.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def passed(figures: dict[str, object]) -> bool:
    gaps = figures["audit_gaps"]
    assert isinstance(gaps, dict)
    return not figures["over_bound"] and not figures["failure_count"] and not any(gaps.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.battery.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of load before sampling")
    parser.add_argument(
        "--root",
        type=Path,
        help="new folder for the node: data dir var/, broker.db, broker.log (default: a temp dir)",
    )
    parser.add_argument("--database-url", help="default: SQLite broker.db in --root")
    parser.add_argument("--out", type=Path, help="default: <data dir>/battery-figures")
    args = parser.parse_args(argv)
    if args.root is not None and args.root.exists() and any(args.root.iterdir()):
        parser.error(f"{args.root} is not empty; the soak starts a fresh node")
    root = args.root or Path(tempfile.mkdtemp(prefix="broker-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "var"
    database_url = args.database_url or f"sqlite:///{root.resolve() / 'broker.db'}"
    figures = run_soak(
        args.seconds,
        data_dir,
        database_url,
        callers=args.callers,
        interval=args.interval,
        out=args.out,
        warmup=args.warmup,
    )
    out = args.out or data_dir / "battery-figures"
    print(json.dumps(figures, indent=2))
    print(f"curves: {out / 'soak.csv'}; figures: {out / 'soak.json'}")
    return 0 if passed(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
