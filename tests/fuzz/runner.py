"""Run harnesses under libFuzzer, each in its own process, and report what they did.

For each harness: ``python -m tests.fuzz.harnesses.<name>`` with instrumentation on, over a
fresh directory for new inputs plus the seed corpus ``corpus/<name>/`` (new inputs are written
to the seed corpus itself with ``save_corpus``), with libFuzzer's limits:
``-max_total_time`` (the budget), ``-timeout`` (one input taking longer is a hang),
``-rss_limit_mb`` (memory blow-up) and ``-max_len``. A crash, hang or memory blow-up makes
libFuzzer stop and write the input to ``findings/`` (or the ``artifact_dir`` given); an
exception that ``fuzz_one`` does not declare is a crash. The number of inputs executed comes
from libFuzzer's final statistics.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.harnesses._support import INSTRUMENT_ENV

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"

#: Every harness, in the order they run, with its largest input in bytes.
HARNESSES: dict[str, int] = {
    "payload_json": 8192,
    "invoke_request": 8192,
    "detectors": 4096,
    "oip_request": 4096,
    "oip_response": 4096,
    "openai_stream": 8192,
    "stream_restore": 4096,
    "audit_note": 4096,
    "audit_checkpoint": 4096,
    "audit_proof": 4096,
    "audit_receipt": 8192,
    "audit_export": 16384,
    "jwt_bearer": 4096,
    "package_manifest": 4096,
    "package_archive": 16384,
    "config_file": 8192,
}

TIMEOUT_S = 10  # one input running longer than this is a hang
RSS_LIMIT_MB = 1536  # the harness process, interpreter and broker modules included


@dataclass(frozen=True)
class Result:
    """What one harness run did."""

    harness: str
    inputs: int
    seconds: float
    new_units: int
    coverage: int
    finding: str  # "" when clean; else "crash", "hang", "oom" or "exit <code>"
    artifacts: tuple[str, ...]
    log: str
    exec_per_s: float  # libFuzzer's average, over its fuzzing time (start-up excluded)


def run(
    harness: str,
    seconds: int,
    *,
    save_corpus: bool = False,
    artifact_dir: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Result:
    """Fuzz one harness for ``seconds`` and return its figures (see the module docstring)."""
    if harness not in HARNESSES:
        raise ValueError(f"unknown harness {harness!r}; one of {', '.join(HARNESSES)}")
    seeds = CORPUS / harness
    seeds.mkdir(parents=True, exist_ok=True)
    findings = artifact_dir or (ROOT / "findings" / harness)
    findings.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{harness}-") as scratch:
        dirs = [str(seeds)] if save_corpus else [scratch, str(seeds)]
        command = [
            sys.executable,
            "-m",
            f"tests.fuzz.harnesses.{harness}",
            f"-max_total_time={seconds}",
            f"-timeout={TIMEOUT_S}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={HARNESSES[harness]}",
            f"-artifact_prefix={findings}/",
            "-print_final_stats=1",
            *extra,
            *dirs,
        ]
        env = {**os.environ, INSTRUMENT_ENV: "1", "PYTHONHASHSEED": "0"}
        started = time.monotonic()
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=seconds + 300,  # reading the seeds and instrumenting take a while
        )
        elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    return Result(
        harness=harness,
        inputs=_stat(log, "number_of_executed_units") or _last_count(log),
        seconds=elapsed,
        new_units=_stat(log, "new_units_added"),
        coverage=_last_field(log, "cov"),
        finding=_finding(log, proc.returncode),
        exec_per_s=_stat(log, "average_exec_per_sec") or (_last_count(log) / elapsed),
        artifacts=tuple(re.findall(r"Test unit written to (\S+)", log)),
        log=log,
    )


def _stat(log: str, name: str) -> int:
    found = re.findall(rf"stat::{name}:\s+(\d+)", log)
    return int(found[-1]) if found else 0


def _last_count(log: str) -> int:
    found = re.findall(r"^#(\d+)\s", log, re.MULTILINE)
    return int(found[-1]) if found else 0


def _last_field(log: str, name: str) -> int:
    found = re.findall(rf"\b{name}: (\d+)", log)
    return int(found[-1]) if found else 0


def _finding(log: str, returncode: int) -> str:
    if "ERROR: libFuzzer: timeout" in log:
        return "hang"
    if "out-of-memory" in log:
        return "oom"
    if "Uncaught Python exception" in log or "ERROR: libFuzzer: deadly signal" in log:
        return "crash"
    if returncode != 0:
        return f"exit {returncode}"
    return ""


def report(result: Result, limit: int = 6000) -> str:
    """The part of a run's log that explains its finding: the traceback and libFuzzer's error."""
    starts = [
        result.log.find(marker)
        for marker in ("=== Uncaught Python exception", "ERROR: libFuzzer", "==ERROR")
    ]
    found = [i for i in starts if i >= 0]
    start = min(found) if found else max(0, len(result.log) - limit)
    return result.log[start : start + limit]


def table(results: list[Result]) -> str:
    """The results as a plain-text table, with a total line."""
    lines = [f"{'harness':<18} {'inputs':>10} {'exec/s':>8} {'new':>5} {'cov':>6}  result"]
    for r in results:
        lines.append(
            f"{r.harness:<18} {r.inputs:>10} {r.exec_per_s:>8.0f} {r.new_units:>5} "
            f"{r.coverage:>6}  {r.finding or 'ok'}"
        )
    total = sum(r.inputs for r in results)
    bad = sum(1 for r in results if r.finding)
    lines.append(f"{'total':<18} {total:>10} {'':>8} {'':>5} {'':>6}  {bad} finding(s)")
    return "\n".join(lines)
