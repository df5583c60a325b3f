"""Retention: deletions per second of retained records (crypto-shredding by the scheduler).

Waits for the retention issue (keyring, retained records, deletion scheduler). When
``broker.retention.scheduler`` exists, replace ``run`` with: retain N records with a TTL already
past, run the scheduler once, and report deletions/s (records and their keys destroyed).
"""

from __future__ import annotations

from bench.sections import NotAvailable, Section
from bench.settings import Settings
from bench.stats import Figure


def run(settings: Settings) -> list[Figure]:
    """Placeholder until the deletion scheduler lands (see the module docstring)."""
    raise NotAvailable(
        "broker.retention.scheduler has landed; its bench section is still to be written"
    )


SECTION = Section(
    key="retention",
    title="retention: deletions/s",
    requires=("broker.retention.scheduler",),
    run=run,
)
