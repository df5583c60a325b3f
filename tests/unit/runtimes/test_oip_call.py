"""Which outbound caller a stub gets: grpcio's segregated call, or the public future.

The calls themselves, cancellation included, run on both paths against a real server in
``tests/integration/test_oip_runtime.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.runtimes import oip_call
from broker.runtimes.oip import MODEL_INFER


@pytest.fixture
def stub() -> Iterator[Any]:
    # A channel connects lazily: nothing listens here and no call is made.
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        yield channel.unary_unary(
            MODEL_INFER,
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
            _registered_method=True,
        )
    finally:
        channel.close()


def test_this_grpcio_gets_the_segregated_caller(stub: Any) -> None:
    # The cheap path is the one in use with the grpcio the broker pins; if an upgrade moves
    # grpcio's internals this fails, and the broker still works on the future path.
    assert oip_call.caller_for(stub).kind == "segregated"


def test_the_future_path_can_be_forced(stub: Any) -> None:
    assert oip_call.caller_for(stub, segregated=False).kind == "future"


class _Wrapped:
    """A multicallable without grpcio's private attributes, as a stub of another grpcio."""

    def __init__(self, inner: Any) -> None:
        self.future = inner.future


def test_a_stub_without_the_internals_falls_back_to_the_future(stub: Any) -> None:
    assert oip_call.caller_for(_Wrapped(stub)).kind == "future"


def test_a_grpcio_without_the_internal_functions_falls_back_to_the_future(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(oip_call._grpc_channel, "_handle_event")
    assert oip_call.caller_for(stub).kind == "future"


def test_a_grpcio_without_its_internal_modules_falls_back_to_the_future(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oip_call, "_cygrpc", None)
    assert oip_call.caller_for(stub).kind == "future"


def test_an_untested_grpcio_release_falls_back_to_the_future(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its internals may keep their names and change their meaning: only tested releases.
    monkeypatch.setattr(grpc, "__version__", "1.99.0")
    assert oip_call.caller_for(stub).kind == "future"
