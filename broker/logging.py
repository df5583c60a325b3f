"""Structured logging with structlog: JSON lines, one event per call.

Events carry identifiers (call id, tenant, model, status, latency) and never payload values,
tokens or secrets. Code logs through ``get_logger(__name__)``; tests use
``structlog.testing.capture_logs`` to assert on events rather than on text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure_logging(
    level: str = "info", *, json_output: bool = True, fields: Mapping[str, object] | None = None
) -> None:
    """Configure structlog for the process: JSON to stderr, ISO timestamps, level filter.

    ``fields`` are added to every event of the process (a node's worker adds its index).
    """
    constant = dict(fields or {})

    def add_fields(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        for key, value in constant.items():
            event.setdefault(key, value)
        return event

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        # One write per event (message and newline together): a node's worker processes share
        # one stderr, and print()'s two writes let their lines interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a logger bound to the component name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
