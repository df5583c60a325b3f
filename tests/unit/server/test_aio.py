"""``SyncContext``: the synchronous servicer context the broker's handlers get under grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import grpc
import grpc.aio
import pytest

from broker.server.aio import SyncContext, _Aborted


class FakeAioContext:
    """The parts of grpc.aio's servicer context that ``SyncContext`` reads."""

    def __init__(self) -> None:
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer x"),)


@pytest.fixture
def aio_context() -> FakeAioContext:
    return FakeAioContext()


@pytest.fixture
def context(aio_context: FakeAioContext) -> Iterator[SyncContext]:
    loop = asyncio.new_event_loop()
    yield SyncContext(cast("grpc.aio.ServicerContext[Any, Any]", aio_context), loop)
    loop.close()


def test_callbacks_run_once_when_the_call_ends(context: SyncContext) -> None:
    ran: list[str] = []
    assert context.add_callback(lambda: ran.append("cancel vendor call"))
    assert context.is_active()
    context.terminate()
    context.terminate()
    assert ran == ["cancel vendor call"]
    assert not context.is_active()


def test_a_callback_added_after_the_end_is_refused(context: SyncContext) -> None:
    context.terminate()
    ran: list[str] = []
    assert context.add_callback(lambda: ran.append("late")) is False
    assert ran == []  # the caller runs it itself (broker_service._on_termination)


def test_a_failing_callback_does_not_skip_the_others(context: SyncContext) -> None:
    ran: list[str] = []

    def fails() -> None:
        raise RuntimeError("boom")

    context.add_callback(fails)
    context.add_callback(lambda: ran.append("second"))
    context.terminate()
    assert ran == ["second"]


def test_not_active_once_grpc_has_sent_the_status(
    context: SyncContext, aio_context: FakeAioContext
) -> None:
    aio_context.finished = True
    assert not context.is_active()


def test_abort_with_status_raises_for_the_loop_to_send(context: SyncContext) -> None:
    status = grpc.Status()  # type: ignore[call-arg]  # an interface; rpc_status builds one so
    status.code = grpc.StatusCode.PERMISSION_DENIED  # type: ignore[misc]
    status.details = "no"  # type: ignore[misc]
    status.trailing_metadata = (("grpc-status-details-bin", b"\x08\x07"),)  # type: ignore[misc]
    with pytest.raises(_Aborted) as raised:
        context.abort_with_status(status)
    assert raised.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details == "no"
    assert raised.value.trailing == (("grpc-status-details-bin", b"\x08\x07"),)


def test_metadata_and_deadline_come_from_the_aio_context(context: SyncContext) -> None:
    assert tuple(context.invocation_metadata()) == (("authorization", "Bearer x"),)
    assert context.time_remaining() is None  # no deadline (grpc.aio says None)
