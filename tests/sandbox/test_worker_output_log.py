"""What a worker prints never reaches the broker's log at the default level.

Vendor code may print the payload it was given. The broker runs here in a child process with
logging configured as ``broker serve`` does (the default level of ``[logging]``), and a worker
prints a canary from its payload; the broker's whole stderr is then searched for it. The same
run at ``debug`` must show it, or the search would prove nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import LoggingConfig
from broker.packages.store import PackageStore
from broker.runtimes.sandbox.launcher import SandboxLauncher

pytestmark = pytest.mark.sandbox

POOL_PACKAGE = Path(__file__).parent / "pool_pkg"
CANARY = "canary-4f1d9c-card-4111111111111111"

_BROKER = """
import sys
from pathlib import Path
from broker.logging import configure_logging
from broker.packages.environment import Environments
from broker.packages.store import PackageStore
from broker.runtimes.sandbox.pool import WorkerPools

data, digest, level, canary = sys.argv[1:5]
configure_logging(level, json_output=True)
pools = WorkerPools(PackageStore(Path(data)), Environments(Path(data) / "envs"))
pools.call(digest, "tenant-a", {"do": "print", "text": canary}, timeout=30)
pools.close()
"""


def _broker_log(tmp_path: Path, level: str) -> str:
    digest = PackageStore(tmp_path).add(POOL_PACKAGE).digest
    run = subprocess.run(
        [sys.executable, "-c", _BROKER, str(tmp_path), digest, level, CANARY],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "sandbox_worker_retired" in run.stderr  # the log was captured, and the call ran
    return run.stderr + run.stdout


@pytest.mark.usefixtures("launcher")  # skips (or fails in CI) where there is no sandbox
def test_a_payload_printed_by_a_worker_is_not_in_the_log_at_the_default_level(
    tmp_path: Path,
) -> None:
    assert LoggingConfig().level == "info"
    assert CANARY not in _broker_log(tmp_path, LoggingConfig().level)


def test_at_debug_the_worker_output_is_logged(tmp_path: Path, launcher: SandboxLauncher) -> None:
    assert CANARY in _broker_log(tmp_path, "debug")
