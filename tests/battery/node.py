"""A broker process under test, and what the battery reads of it from the outside.

The battery attacks a real ``broker serve`` process (``ServeProcess``, the one the serve tests
use), so its figures are those of the process an operator runs: memory, descriptors and threads
come from the kernel through psutil, queue depth and sandbox workers from the broker's own
``/metrics`` page, and the audit trail from the database the broker wrote it to. Nothing here
asks the broker how it is doing through a back door.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import sqlalchemy as sa

from broker.audit.tables import audit_entries
from tests.integration.test_serve_process import ServeProcess

MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One reading of the broker process (``t``: seconds since the run started)."""

    t: float
    rss_bytes: int
    open_fds: int
    threads: int
    children: int
    audit_queue_depth: float
    sandbox_workers: float


def start_node(
    data_dir: Path,
    database_url: str,
    *,
    log_name: str = "broker.log",
    command_prefix: tuple[str, ...] = (),
    **env: str,
) -> ServeProcess:
    """``broker serve`` with its metrics page on a free port (the battery reads it)."""
    return ServeProcess(
        data_dir,
        database_url,
        {"BROKER__METRICS__LISTEN": "127.0.0.1:0", **env},
        log_name=log_name,
        command_prefix=command_prefix,
    )


def metric_values(node: ServeProcess) -> dict[str, float]:
    """Unlabelled samples and the sum over labels of each metric on the node's /metrics page."""
    port = next(e["port"] for e in node.events() if e.get("event") == "metrics_started")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + float(value)
    return values


def broker_processes(node: ServeProcess) -> list[psutil.Process]:
    """The node's broker processes: the one started, and the ``[server] workers`` it forks
    (``serve --worker``); sandbox workers and other children are not the broker's own memory."""
    main = psutil.Process(node.process.pid)
    found = [main]
    for child in main.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "broker.cli.main" in " ".join(child.cmdline()):
                found.append(child)
    return found


@dataclass(frozen=True)
class Usage:
    """Resident memory, open descriptors and threads summed over the broker's processes."""

    rss_bytes: int
    open_fds: int
    threads: int
    processes: int


def usage(node: ServeProcess) -> Usage:
    rss = fds = threads = count = 0
    for process in broker_processes(node):
        with contextlib.suppress(psutil.Error), process.oneshot():
            rss += process.memory_info().rss
            fds += process.num_fds()
            threads += process.num_threads()
            count += 1
    return Usage(rss, fds, threads, count)


def sample(node: ServeProcess, t: float) -> Sample:
    """RSS, descriptors, threads and children of the broker, and its queue and pool gauges."""
    now = usage(node)
    children = len(psutil.Process(node.process.pid).children(recursive=True))
    values = metric_values(node)
    return Sample(
        t=round(t, 3),
        rss_bytes=now.rss_bytes,
        open_fds=now.open_fds,
        threads=now.threads,
        children=children,
        audit_queue_depth=values.get("broker_audit_queue_depth", 0.0),
        sandbox_workers=values.get("broker_sandbox_workers", 0.0),
    )


def write_figures(path: Path, figures: Mapping[str, object]) -> None:
    """Write ``figures`` as indented JSON (samples as plain dicts), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def plain(value: object) -> object:
        return asdict(value) if isinstance(value, Sample) else str(value)

    path.write_text(json.dumps(figures, indent=2, default=plain) + "\n")


@dataclass(frozen=True)
class AuditRow:
    """What the battery needs of one audit entry."""

    kind: str
    call_id: str
    status: str


def audit_rows(database_url: str) -> list[AuditRow]:
    """Every entry the broker committed to its log, read from its database."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_entries.c.kind, audit_entries.c.call_id, audit_entries.c.status)
            ).all()
    finally:
        engine.dispose()
    return [AuditRow(str(kind), str(call_id), str(status)) for kind, call_id, status in rows]


def calls_that_reached_policy(events: Iterable[Mapping[str, object]]) -> dict[str, str]:
    """Call id -> status of every Invoke and InvokeStream the node logged past its policy
    decision (the interceptor's one ``rpc`` event carries the ``policy_revision`` bound then)."""
    return {
        str(event["call_id"]): str(event["status"])
        for event in events
        if event.get("event") == "rpc" and "call_id" in event and "policy_revision" in event
    }


def audit_gaps(rows: Iterable[AuditRow], must_have_outcome: Iterable[str]) -> dict[str, list[str]]:
    """What the log lacks: calls in ``must_have_outcome`` with no outcome entry, and intents
    (something was sent to a model) with no outcome. Empty lists mean a complete trail."""
    rows = list(rows)
    intents = {r.call_id for r in rows if r.kind == "call.intent"}
    outcomes = {r.call_id for r in rows if r.kind == "call.outcome"}
    return {
        "no_outcome": sorted(c for c in must_have_outcome if c not in outcomes),
        "intent_without_outcome": sorted(intents - outcomes),
    }
