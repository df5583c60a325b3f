"""A sandboxed model that answers with exactly what it received, to show what reached it."""

from __future__ import annotations

from typing import Any


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload under ``received``."""
    return {"received": payload}
