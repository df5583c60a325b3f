"""What a cluster is made of and where its files live (light: the CLI imports it at start)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
DEFAULT_ROOT: Final = Path("var/cluster")
DEFAULT_DATABASE_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/broker_cluster"
DEFAULT_FRONT: Final = "127.0.0.1:50050"
DEFAULT_REPLICA_PORT: Final = 50061
READY_TIMEOUT_S: Final = 120.0
STOP_GRACE_S: Final = 15.0


def replica_name(index: int) -> str:
    """The DNS name in replica ``index``'s certificate, which the balancer verifies."""
    return f"replica-{index}"


class ClusterError(RuntimeError):
    """The cluster cannot start or stop; the message says why and what to do."""


@dataclass(frozen=True)
class ClusterSettings:
    """What ``broker cluster up`` starts.

    ``workers``: broker processes per replica. One by default: on a 2-core machine three
    replicas already give the kernel more CPU-bound processes than cores, and a replica of one
    process is one pid the operator (or the cluster test) can kill and restart.
    ``replica_port``: the first replica's port, the next ones follow; 0 picks free ports.
    ``overrides``: extra settings for every replica's broker.toml, as nested tables.
    """

    root: Path = DEFAULT_ROOT
    replicas: int = 3
    workers: int = 1
    front: str = DEFAULT_FRONT
    replica_port: int = DEFAULT_REPLICA_PORT
    database_url: str = DEFAULT_DATABASE_URL
    policy_dir: Path = REPO / "policies"
    check_interval_ms: int = 1000
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def retention_key(self) -> Path:
        return self.root / "retention-root.key"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def stats_socket(self) -> Path:
        return self.root / "haproxy.sock"

    def replica_dir(self, index: int) -> Path:
        return self.root / replica_name(index)
