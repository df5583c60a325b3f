"""``python -m bench``: run every section, print the table, write ``bench/results.json``.

Exit status: 0 when every available section ran, 1 when one failed (its error is printed and
recorded), 130 on Ctrl-C. Sections whose broker modules do not exist yet print "not available
yet" and do not fail the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any

from bench.machine import describe_machine
from bench.report import format_figures, write_results
from bench.sections import NotAvailable, Section, all_sections
from bench.settings import Settings


def _parse(argv: list[str] | None) -> tuple[Settings, set[str] | None, argparse.Namespace]:
    names = [s.key for s in all_sections()]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (< 1 min) for development")
    parser.add_argument("--repeat", type=int, help="repeats of every figure (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (default 5)")
    parser.add_argument(
        "--latency-duration", type=float, help="seconds per latency run (default 5)"
    )
    parser.add_argument("--rates", type=float, nargs="+", help="offered loads, calls/s (100 300)")
    parser.add_argument("--concurrency", type=int, help="closed-loop callers (default 16)")
    parser.add_argument("--cpu-calls", type=int, help="calls per CPU figure (default 2000)")
    parser.add_argument("--only", nargs="+", choices=names, help="run only these sections")
    parser.add_argument(
        "--broker-workers",
        type=int,
        help="broker processes ([server] workers; default: the broker's own, one per core)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the sections: CPU per stage of one Invoke (bench/profile.json)",
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="with --profile: instructions per call"
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="with --profile: the broker serves its Prometheus page (the cost of recording)",
    )
    parser.add_argument(
        "--aio",
        action="store_true",
        help="the broker serves with [server] aio (grpc.aio; experimental)",
    )
    parser.add_argument("--calls", type=int, help="with --profile: calls to profile")
    parser.add_argument("--warmup", type=int, help="with --profile: calls before measuring")
    args = parser.parse_args(argv)
    if (args.callgrind or args.metrics) and not args.profile:
        parser.error("--callgrind and --metrics go with --profile")
    if args.metrics:
        os.environ["BENCH_BROKER_METRICS"] = "1"  # bench.profile.METRICS_ENV, for the children
    if args.aio:  # the sections' broker reads os.environ; --profile's reads bench.profile's
        os.environ["BROKER__SERVER__AIO"] = "true"
    if args.broker_workers is not None:  # the broker reads its config from the environment
        os.environ["BROKER__SERVER__WORKERS"] = str(args.broker_workers)
    settings = Settings.quick_settings() if args.quick else Settings()
    overrides = {
        "repeat": args.repeat,
        "duration": args.duration,
        "latency_duration": args.latency_duration,
        "rates": tuple(args.rates) if args.rates else None,
        "concurrency": args.concurrency,
        "cpu_calls": args.cpu_calls,
    }
    settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
    return settings, set(args.only) if args.only else None, args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; see the module docstring for the exit status."""
    settings, only, args = _parse(argv)
    if args.profile:
        from bench.profile import PROFILE_JSON, run  # noqa: PLC0415 - only --profile needs it

        return run(args.calls, args.warmup, callgrind=args.callgrind, output=PROFILE_JSON)
    signal.signal(signal.SIGTERM, _interrupt)  # unwind (and stop the servers) on SIGTERM too
    _quiet_broker_logs()
    machine = describe_machine()
    print(
        f"bench on {machine['cpu_model']} ({machine['cores']} cores), Python "
        f"{machine['python']}, load {machine['load_average_at_start']}"
        f"{', QUICK (indicative only)' if settings.quick else ''}",
        flush=True,
    )
    document: dict[str, Any] = {
        "machine": machine,
        "settings": settings.to_json(),
        "sections": {},
    }
    failed = False
    tables: list[str] = []
    started = time.monotonic()
    try:
        for section in all_sections():
            if only is not None and section.key not in only:
                continue
            entry, table = _run_section(section, settings)
            document["sections"][section.key] = entry
            failed |= entry["status"] == "failed"
            if table:
                tables.append(table)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    document["wall_seconds"] = round(time.monotonic() - started, 1)
    print("\n" + "\n\n".join(tables))
    path = write_results(document)
    print(f"\nwrote {path} ({document['wall_seconds']} s)")
    return 1 if failed else 0


def _run_section(section: Section, settings: Settings) -> tuple[dict[str, Any], str]:
    """Run one section; missing modules and failures become entries, not crashes."""
    entry: dict[str, Any] = {"title": section.title}
    missing = section.missing()
    if missing:
        print(f"-- {section.title}: not available yet ({', '.join(missing)} missing)", flush=True)
        return {**entry, "status": "not available yet", "reason": f"missing {missing}"}, ""
    print(f"-- {section.title} ...", flush=True)
    t0 = time.monotonic()
    try:
        figures = section.run(settings)
    except NotAvailable as exc:
        print(f"   not available yet: {exc}", flush=True)
        return {**entry, "status": "not available yet", "reason": str(exc)}, ""
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        traceback.print_exc()
        print(f"   FAILED: {exc}", flush=True)
        return {**entry, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}, ""
    table = format_figures(section.title, figures)
    print(f"   done ({time.monotonic() - t0:.1f} s)", flush=True)
    entry.update(status="ok", figures=[f.to_json() for f in figures])
    return entry, table


def _quiet_broker_logs() -> None:
    """In-process sections use broker modules that log at info; the table is what matters."""
    from broker.logging import configure_logging  # noqa: PLC0415 - the bench's only use

    configure_logging("warning", json_output=False)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
