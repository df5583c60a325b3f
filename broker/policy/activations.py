"""The cluster's record of activated policy bundles, so every replica decides with one revision.

Why: each replica reads its bundle from its own directory, and directories drift (a rolling
deploy, a hand edit on one host). A security team that activates a bundle through
``broker.v1.Policies`` on one replica expects every replica to enforce it. So an activation is
stored in the shared database (the bundle's files themselves, not a path), other replicas are
told through the change feed, and each adopts the newest stored bundle.

Rules, in order:

- An explicit reload on a replica (``ReloadPolicy``, ``broker policy reload``, SIGHUP) records
  that replica's bundle: the newest record is the cluster's active bundle.
- A replica that starts, or whose watcher sees its directory edited, records its bundle only if
  the cluster has never activated that revision; otherwise it adopts the newest record. So a new
  bundle rolled out to the replicas' directories is activated by the first of them to see it,
  and a replica that starts with a bundle the cluster has since replaced never rolls it back.
- The stored files are checked against their revision when read: a row changed in the database
  (not through the broker) is refused and the replica keeps its active bundle.

Rows are only appended; the table is small (one row per activation) and is the activation
history a compliance officer may ask for, beside the ``policy.activated`` audit entries.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
import sqlalchemy as sa
from sqlmodel import SQLModel

from broker.policy.bundle import Bundle, bundle_from_files
from broker.policy.contract import PolicyLoadError

policy_activations = sa.Table(
    "policy_activations",
    SQLModel.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("revision", sa.String(80), nullable=False),
    sa.Column("files", sa.LargeBinary, nullable=False),
    sa.Column("activated_at", sa.Float, nullable=False),
    sa.Column("replica", sa.String(255), nullable=False),
    sa.Index("ix_policy_activations_revision", "revision"),
)

#: Where an adopted bundle says it came from (``Bundle.root``).
CLUSTER_ROOT: Final = Path("cluster:policy_activations")

_LATEST: Final = (
    sa.select(policy_activations.c.revision, policy_activations.c.files)
    .order_by(policy_activations.c.id.desc())
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class StoredActivation:
    """The newest activation: its revision and the bundle it activated."""

    revision: str
    bundle: Bundle


def encode_files(bundle: Bundle) -> bytes:
    """The bundle's files as stored: a JSON list of ``[path, text]`` (bundles are UTF-8)."""
    return orjson.dumps([[rel, content.decode("utf-8")] for rel, content in bundle.files])


def decode_files(revision: str, stored: bytes) -> Bundle:
    """The bundle stored under ``revision``; :class:`PolicyLoadError` if it does not match."""
    try:
        items = orjson.loads(stored)
        files = [(str(rel), str(text).encode("utf-8")) for rel, text in items]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        raise PolicyLoadError(f"the stored bundle of {revision} is malformed") from None
    bundle = bundle_from_files(CLUSTER_ROOT, files)
    if bundle.revision != revision:
        raise PolicyLoadError(
            f"the stored bundle of {revision} has revision {bundle.revision}: the row was "
            "changed outside the broker"
        )
    return bundle


class PolicyActivations:
    """Reads and appends rows of ``policy_activations``; thread-safe (one engine)."""

    def __init__(self, engine: sa.Engine, *, replica: str | None = None) -> None:
        self._engine = engine
        self._replica = replica or socket.gethostname()

    def record(self, bundle: Bundle) -> None:
        """Append ``bundle`` as the cluster's newest activation."""
        with self._engine.begin() as conn:
            conn.execute(
                policy_activations.insert().values(
                    revision=bundle.revision,
                    files=encode_files(bundle),
                    activated_at=time.time(),
                    replica=self._replica,
                )
            )

    def latest(self) -> StoredActivation | None:
        """The newest activation, or ``None`` if the cluster has none yet."""
        with self._engine.connect() as conn:
            row = conn.execute(_LATEST).first()
        if row is None:
            return None
        return StoredActivation(row.revision, decode_files(row.revision, row.files))

    def latest_revision(self) -> str | None:
        """The newest activation's revision (one indexed read, no files)."""
        query = (
            sa.select(policy_activations.c.revision)
            .order_by(policy_activations.c.id.desc())
            .limit(1)
        )
        with self._engine.connect() as conn:
            revision: str | None = conn.execute(query).scalar()
        return revision

    def known(self, revision: str) -> bool:
        """Whether the cluster has ever activated ``revision``."""
        query = sa.select(sa.literal(1)).where(policy_activations.c.revision == revision).limit(1)
        with self._engine.connect() as conn:
            return conn.execute(query).first() is not None
