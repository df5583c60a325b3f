"""How long and how hard the bench runs; ``--quick`` is for development, not for figures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Every knob of a run; all runs are bounded by these durations and counts."""

    repeat: int = 3
    duration: float = 5.0  # seconds of closed loop per throughput figure
    latency_duration: float = 5.0  # seconds of open loop per latency figure
    rates: tuple[float, ...] = (100.0, 300.0)  # offered loads for latency, calls/s
    concurrency: int = 16  # closed-loop callers (the broker has 16 threads)
    cpu_calls: int = 2000  # calls per CPU-per-call figure (10 ms /proc resolution)
    warmup: float = 1.0  # seconds of calls before every measured run
    micro_seconds: float = 1.0  # time budget of each in-process micro-benchmark
    merkle_entries: int = 1_000_000  # audit log size for the proof-time figure
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        """Short runs that finish well under a minute; the figures are only indicative."""
        return cls(
            repeat=1,
            duration=1.5,
            latency_duration=1.5,
            cpu_calls=300,
            warmup=0.3,
            micro_seconds=0.2,
            merkle_entries=50_000,
            quick=True,
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some knobs changed (command-line overrides)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The settings as results.json records them."""
        return dataclasses.asdict(self)
