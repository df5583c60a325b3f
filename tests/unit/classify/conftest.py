"""Show the detector precision/recall table at the end of every run that measured it.

The metrics test records the table here; printing it from ``pytest_terminal_summary`` makes it
part of the normal test output (no ``-s`` needed) without writing any file into the tree.
"""

from __future__ import annotations

import pytest

METRICS_TABLE = pytest.StashKey[str]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print the table recorded by ``test_detector_metrics``, if that test ran."""
    table = config.stash.get(METRICS_TABLE, None)
    if table is not None:
        terminalreporter.section("detector precision / recall (generated corpus)")
        terminalreporter.write_line(table)
