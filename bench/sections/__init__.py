"""The bench's sections, in the order they run.

A section is a name, the broker modules it needs, and a function from ``Settings`` to figures.
When a needed module does not exist yet (other issues are still building it) the section is
reported as "not available yet" instead of failing, so adding a section is: write a module
here with a ``SECTION``, and add it to ``SECTIONS``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from bench.settings import Settings
from bench.stats import Figure


class NotAvailable(Exception):
    """Raised by a section that finds at run time that its subject cannot run here yet."""


@dataclass(frozen=True)
class Section:
    """One group of figures and the modules it needs."""

    key: str
    title: str
    requires: tuple[str, ...]
    run: Callable[[Settings], list[Figure]]

    def missing(self) -> list[str]:
        """The required modules that cannot be imported (yet)."""
        return [name for name in self.requires if not _module_exists(name)]


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


_MODULES = (
    "hops",
    "server_model",
    "plan_cache",
    "policy_engines",
    "detectors",
    "audit",
    "sandbox",
    "retention",
    "llm",
    "cluster",
    "stages",  # last: its in-process broker points the process's structlog at /dev/null
)
_EXTRA = ("SECTION", "DURABLE_SECTION")  # the names a section module may export


def all_sections() -> list[Section]:
    """Every section, core first.

    Each module is imported on its own: one that cannot be imported (the broker tree it imports
    is mid-change) becomes a section that fails with the import error, and the others still run.
    """
    sections: list[Section] = []
    for name in _MODULES:
        try:
            module = importlib.import_module(f"bench.sections.{name}")
        except Exception as exc:  # noqa: BLE001 - reported as that section's failure
            sections.append(Section(name, name, (), _failing(exc)))
            continue
        sections.extend(getattr(module, attr) for attr in _EXTRA if hasattr(module, attr))
    return sections


def _failing(exc: Exception) -> Callable[[Settings], list[Figure]]:
    def run(settings: Settings) -> list[Figure]:
        raise RuntimeError(f"cannot import the section: {type(exc).__name__}: {exc}") from exc

    return run
