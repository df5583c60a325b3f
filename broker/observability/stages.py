"""The stages of one call, timed: a histogram observation each, and a span when tracing is on.

``with stage("classify"): ...`` around each stage of the call path. The stage names are fixed
(:data:`STAGES`): they are the label values of ``broker_stage_duration_seconds`` and the names of
the child spans of a call's trace. When metrics are not served and tracing is off, ``stage``
returns one shared object whose enter and exit do nothing, so an unobserved broker pays only two
function calls per stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Final

from prometheus_client import Histogram

from broker.observability import metrics
from broker.observability.metrics import STAGE_SECONDS

STAGES: Final = (
    "auth",
    "resolve",
    "quota",
    "classify",
    "decide",
    "enforce",
    "audit_intent",
    "dispatch",
    "restore",
    "audit_outcome",
)

_CHILDREN: Final = {name: STAGE_SECONDS.labels(name) for name in STAGES}

SpanFactory = Callable[[str], AbstractContextManager[object]]


class _Settings:
    spans: SpanFactory | None = None


_settings = _Settings()


def set_span_factory(factory: SpanFactory | None) -> None:
    """Open a child span per stage with ``factory(name)`` (``None``: no spans)."""
    _settings.spans = factory


class _Unobserved:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_UNOBSERVED: Final = _Unobserved()


class _Timed:
    """A stage observed by its histogram only (metrics on, tracing off): the common case."""

    __slots__ = ("_child", "_started")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._child.observe(time.perf_counter() - self._started)


class _Traced:
    """A stage with a span (tracing on), and its histogram when metrics are on too."""

    __slots__ = ("_child", "_span", "_started")

    def __init__(self, span: AbstractContextManager[object], child: Histogram | None) -> None:
        self._span = span
        self._child = child
        self._started = 0.0

    def __enter__(self) -> None:
        self._span.__enter__()
        self._started = time.perf_counter()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._child is not None:
            self._child.observe(time.perf_counter() - self._started)
        self._span.__exit__(kind, exc, tb)


def stage(name: str) -> AbstractContextManager[None]:
    """Time the stage ``name`` (one of :data:`STAGES`) and trace it when tracing is on."""
    spans = _settings.spans
    timed = metrics.enabled()
    if spans is None:
        return _Timed(_CHILDREN[name]) if timed else _UNOBSERVED
    return _Traced(spans(name), _CHILDREN[name] if timed else None)
