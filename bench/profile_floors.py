"""Floors for ``python -m bench --profile``: what each stage's unavoidable work costs alone.

Issue 12 asks, where a target is not reached, for "the floor you measured for each remaining
stage and why it cannot go lower". A stage's floor here is the bare primitive the stage cannot
do without, measured in the profile's own process with the profile's own clocks and
arithmetic, right after the profile, on the same workload:

- **gRPC server side**: a bare grpcio synchronous server in this process (16 threads, as the
  broker's), a generic handler that answers the request's bytes unparsed, called one call at a
  time from this process; process CPU per call minus the calling thread's CPU, exactly as the
  profile computes its "gRPC server, interceptor, rpc log, hooks" row. No broker can serve a
  gRPC call on grpcio for less.
- **outbound call**: a plain blocking unary call of the workload's ``ModelInferRequest`` bytes
  to the same OIP echo backend (another process), no (de)serialisation: the process CPU the
  broker's "gRPC call" row cannot go under while it calls the vendor with grpcio.
- **durable append**: what SQLite charges for the rows of one audit transaction, on SQLite in
  WAL mode with ``synchronous=NORMAL`` (the broker's durability setting), through the standard
  library's ``sqlite3`` with every parameter built before the clock starts: the broker's own
  tables and indexes (made by its migrations) and real rows copied from the profiled broker's
  database (an entry, its Merkle node rows, and the companions: three token-vault rows with
  the intent, one usage row with the outcome). Paid twice per call: the design makes the
  intent durable before dispatch and the outcome before the answer. Shown beside it, not
  counted: one entry-sized row into a table with no index, the bare price of a commit.
- **detection**: ``default_detector_set().scan`` of every string of the payload and nothing
  else (no walk of the document, no schema labels, no ``FieldInfo``): the detectors are the
  contract (``tests/unit/classify``'s reference equivalence) and were tuned before
  (bench/README.md). Paid for the request and again for the answer (the echo returns the same
  strings).
- **answer decoding**: ``ModelInferResponse.FromString`` of the backend's real answer: the
  protobuf parse any mapping of the answer starts with.

The sum of the floors against the bare proxy's own work (its server side plus its outbound
call, i.e. the first two floors) is a lower bound for the CPU ratio the issue targets at
1.25x: the ratio any broker on this stack would show if every other line of its code cost
nothing.
"""

from __future__ import annotations

import gc
import itertools
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench import workload
from bench.topology import MODEL_INFER

#: Serialised size of the bench's audit entries (an Invoke's intent and outcome are 600-900
#: bytes of canonical JSON); the row the floor commits carries this many bytes plus a digest.
ENTRY_BYTES = 800
DEFAULT_CALLS = 500

#: Profile rows each floor bounds, as ``(stage, part)``; ``None`` for the stage as a whole.
BOUNDS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "gRPC server side": (("outside the stages", "gRPC server, interceptor, rpc log, hooks"),),
    "outbound call": (("dispatch", "gRPC call"),),
    "durable append, this schema": (("audit intent", None), ("audit outcome", None)),
    "detection": (("classify", None), ("answer path", "classify")),
    "answer decoding": (("dispatch", "tensor mapping, answer"),),
}
#: How many times a call pays each floor (two audit entries, two classifications).
TIMES = {
    "gRPC server side": 1,
    "outbound call": 1,
    "durable append, bare row": 0,
    "durable append, this schema": 2,
    "detection": 2,
    "answer decoding": 1,
}
#: The floors a bare pass-through proxy pays: the denominator of the lower bound.
PROXY_FLOORS = ("gRPC server side", "outbound call")


def measure_floors(
    backend_target: str, database: Path, calls: int = DEFAULT_CALLS
) -> dict[str, Any]:
    """Every floor's median process CPU per call in µs, and the lower bound they imply."""
    infer = workload.infer_request_bytes()
    with grpc.insecure_channel(backend_target) as channel:
        model_infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(MODEL_INFER)
        answer: bytes = model_infer(infer, timeout=30)
        floors = {
            "gRPC server side": _server_side(workload.invoke_request_bytes(), calls),
            "outbound call": _median_us(lambda: model_infer(infer, timeout=30), calls),
            "durable append, bare row": _bare_commit(calls),
            "durable append, this schema": _schema_commit(database, calls),
            "detection": _detection(calls),
            "answer decoding": _answer_decoding(answer, calls),
        }
    per_call = sum(floors[name] * TIMES[name] for name in floors)
    proxy = sum(floors[name] for name in PROXY_FLOORS)
    return {
        "unit": "µs of process CPU per call (median)",
        "floors": {
            name: {"us": round(us, 1), "times_per_call": TIMES[name]} for name, us in floors.items()
        },
        "sum_per_call_us": round(per_call, 1),
        "proxy_floor_us": round(proxy, 1),
        "lower_bound_ratio": round(per_call / proxy, 2),
    }


def floor_of(floors: dict[str, Any], stage: str, part: str | None) -> float | None:
    """The floor (µs) that bounds the profile row ``(stage, part)``, if one does."""
    for name, rows in BOUNDS.items():
        if (stage, part) in rows and name in floors:
            us: float = floors[name]["us"]
            return us
    return None


def _median_us(call: Callable[[], object], calls: int, *, minus_thread: bool = False) -> float:
    """Median process CPU of ``call`` in µs (less the calling thread's own, if asked)."""
    for _ in range(min(50, calls)):
        call()
    samples: list[int] = []
    gc.collect()
    for _ in range(calls):
        process, thread = time.process_time_ns(), time.thread_time_ns()
        call()
        spent = time.process_time_ns() - process
        if minus_thread:
            spent -= time.thread_time_ns() - thread
        samples.append(spent)
    return statistics.median(samples) / 1000


def _server_side(request: bytes, calls: int) -> float:
    """A bare grpcio sync server's side of one unary call, as the profile attributes it."""
    with _echo_server() as target, grpc.insecure_channel(target) as channel:
        echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.Floor/Echo")
        return _median_us(lambda: echo(request, timeout=30), calls, minus_thread=True)


@contextmanager
def _echo_server() -> Iterator[str]:
    """A grpcio synchronous server on a free loopback port answering each request's bytes."""

    def echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Floor", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=16), maximum_concurrent_rpcs=128)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _bare_commit(calls: int) -> float:
    """One entry-sized row inserted and committed on SQLite, WAL, ``synchronous=NORMAL``."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        connection = _sqlite(Path(tmp) / "floor.db")
        try:
            connection.execute(
                "CREATE TABLE entries (idx INTEGER PRIMARY KEY, data BLOB, digest BLOB)"
            )
            data, digest = os.urandom(ENTRY_BYTES), os.urandom(32)
            index = itertools.count()

            def append() -> None:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "INSERT INTO entries VALUES (?, ?, ?)", (next(index), data, digest)
                )
                connection.execute("COMMIT")

            return _median_us(append, calls)
        finally:
            connection.close()


def _schema_commit(database: Path, calls: int) -> float:
    """The rows of one call's audit transaction, replayed on a fresh copy of the schema.

    The broker's real tables and indexes (made by its own migrations), and a real row of each
    kind copied from the profiled broker's database (``database``): an audit entry, its Merkle
    node rows, and the companion rows (three token-vault rows with the intent, one usage row
    with the outcome), with fresh keys. The two transactions alternate, as in a call; the
    figure is one transaction. No Python builds anything inside the clock: this is what SQLite
    charges for the rows the design writes.
    """
    from broker.storage.db import create_engine_for, migrate  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        engine = create_engine_for(f"sqlite:///{Path(tmp) / 'floor.db'}")
        try:
            migrate(engine)
        finally:
            engine.dispose()
        entry, token, usage = _sample_rows(database)
        connection = _sqlite(Path(tmp) / "floor.db")
        try:
            leaves = itertools.count()

            def transaction() -> None:
                leaf = next(leaves)
                call_id = uuid.uuid4().hex
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "SELECT leaf_index FROM audit_entries ORDER BY leaf_index DESC LIMIT 1"
                ).fetchone()
                _insert(connection, "audit_entries", entry, leaf_index=leaf, call_id=call_id)
                connection.executemany(
                    "INSERT INTO audit_nodes VALUES (?, ?, ?)",
                    [(level, leaf >> level, entry["entry_hash"]) for level in _levels(leaf)],
                )
                if leaf % 2 == 0:  # the intent: the call's token-vault rows
                    for _ in range(3):
                        _insert(connection, "vault_tokens", token, token=uuid.uuid4().hex[:24])
                else:  # the outcome: the call's usage row
                    _insert(connection, "usage_records", usage, call_id=call_id, leaf_index=leaf)
                connection.execute("COMMIT")

            return _median_us(transaction, calls)
        finally:
            connection.close()


def _sqlite(path: Path) -> sqlite3.Connection:
    """A driver connection with the broker's durability settings (``broker.storage.db``)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _sample_rows(database: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One real row each: an audit entry, a token-vault row, a usage row."""
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    source.row_factory = sqlite3.Row
    try:
        rows = []
        for query in (
            "SELECT * FROM audit_entries ORDER BY leaf_index DESC LIMIT 1",
            "SELECT * FROM vault_tokens LIMIT 1",
            "SELECT * FROM usage_records LIMIT 1",
        ):
            row = source.execute(query).fetchone()
            if row is None:
                raise RuntimeError(f"the profiled broker wrote no row for: {query}")
            rows.append(dict(row))
        return rows[0], rows[1], rows[2]
    finally:
        source.close()


def _insert(connection: sqlite3.Connection, table: str, row: dict[str, Any], **fresh: Any) -> None:
    values = {**row, **fresh}
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    connection.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values()))  # noqa: S608


def _levels(leaf: int) -> list[int]:
    """The tree levels whose node completes with ``leaf``: 0, and one per trailing 1 bit."""
    levels = [0]
    while leaf & 1:
        leaf >>= 1
        levels.append(len(levels))
    return levels


def _detection(calls: int) -> float:
    """The default detectors' scan of every string of the payload, nothing around it."""
    from broker.classify.detectors import default_detector_set  # noqa: PLC0415

    detectors = default_detector_set()
    texts = [value for value in workload.payload().values() if isinstance(value, str)]

    def scan() -> None:
        for text in texts:
            detectors.scan(text)

    return _median_us(scan, calls)


def _answer_decoding(answer: bytes, calls: int) -> float:
    """The protobuf parse of the backend's answer."""
    from broker._proto.inference.v2 import grpc_predict_v2_pb2 as oip  # noqa: PLC0415

    return _median_us(lambda: oip.ModelInferResponse.FromString(answer), calls)
