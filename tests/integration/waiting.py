"""Waiting for something another process or thread does, without sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

WAIT_S = 60.0


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.05)
