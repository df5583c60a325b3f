"""OpenInferenceRuntime against a real MLServer, and against a fake OIP server for the rest.

MLServer (``mlserver`` fixture) proves real inference, shape errors and deadlines; a grpcio
server on port 0 plays a slow, hostile or overloaded backend, and shows that a deadline or a
buyer's cancellation really cancels the outbound call (the fake sees its context go inactive).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from broker.config import BackendsConfig
from broker.demo.mlserver import MLServerProcess
from broker.errors import (
    BackendError,
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
)
from broker.registry.model import (
    Endpoint,
    ModelVersion,
    OipMapping,
    Runtime,
    TensorInput,
    TensorOutput,
)
from broker.runtimes.base import Canceller
from broker.runtimes.base import Runtime as RuntimeProtocol
from broker.runtimes.oip import OpenInferenceRuntime
from tests.integration.fake_oip import SECRET, FakeBackend, self_signed, serve

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
FEATURES = ("/sepal_length", "/sepal_width", "/petal_length", "/petal_width")
PATHS_MAPPING = OipMapping(
    inputs=(TensorInput(name="input-0", datatype="FP64", shape=(1, 4), paths=FEATURES),),
    outputs=(TensorOutput(name="predict", path="/species", squeeze=True),),
)
BATCH_MAPPING = OipMapping(
    inputs=(TensorInput(name="input-0", datatype="FP64", shape=(-1, 4), path="/samples"),),
    outputs=(
        TensorOutput(name="predict", path="/species"),
        TensorOutput(name="predict_proba", path="/probabilities"),
    ),
)


def model(target: str, mapping: OipMapping, **endpoint: Any) -> ModelVersion:
    return ModelVersion(
        vendor="demo",
        name="iris-classifier",
        version="1.0",
        runtime=Runtime.OPEN_INFERENCE_GRPC,
        endpoint=Endpoint(
            target=target, remote_model=endpoint.pop("remote_model", "iris"), **endpoint
        ),
        oip_mapping=mapping,
    )


@pytest.fixture(params=[True, False], ids=["segregated", "future"])
def segregated(request: pytest.FixtureRequest) -> bool:
    """Every runtime test runs on both outbound paths: grpcio's segregated call and the public
    future it falls back to (``broker.runtimes.oip_call``)."""
    return bool(request.param)


@pytest.fixture
def runtime(segregated: bool) -> Iterator[OpenInferenceRuntime]:
    rt = OpenInferenceRuntime(
        BackendsConfig(max_answer_bytes=64 * 1024), segregated_calls=segregated
    )
    try:
        yield rt
    finally:
        rt.close()


def test_is_a_runtime(runtime: OpenInferenceRuntime) -> None:
    assert isinstance(runtime, OpenInferenceRuntime)
    _: RuntimeProtocol = runtime  # mypy checks the structural type


# --- real MLServer ---------------------------------------------------------------------------


@pytest.mark.mlserver
def test_iris_prediction_from_four_fields(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    iris = model(mlserver.grpc_target, PATHS_MAPPING)
    assert runtime.invoke(iris, SETOSA, timeout=10, call_id="c1") == {"species": 0}
    assert runtime.invoke(iris, VIRGINICA, timeout=10, call_id="c2") == {"species": 2}


@pytest.mark.mlserver
def test_iris_batch_from_a_nested_list(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 2.8, 4.3, 1.3]]
    answer = runtime.invoke(
        model(mlserver.grpc_target, BATCH_MAPPING), {"samples": rows}, timeout=10, call_id="c"
    )
    assert answer["species"] == [[0], [2], [1]]
    probabilities = answer["probabilities"]
    assert [len(p) for p in probabilities] == [3, 3, 3]
    assert all(abs(sum(p) - 1) < 1e-6 for p in probabilities)
    assert [p.index(max(p)) for p in probabilities] == [0, 2, 1]


@pytest.mark.mlserver
def test_without_output_mapping_every_output_appears_by_name(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    mapping = OipMapping(inputs=PATHS_MAPPING.inputs)
    answer = runtime.invoke(model(mlserver.grpc_target, mapping), SETOSA, timeout=10, call_id="c")
    assert answer == {"predict": [[0]]}


@pytest.mark.mlserver
def test_one_pooled_channel_shared_by_concurrent_calls(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    iris = model(mlserver.grpc_target, PATHS_MAPPING)
    with futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: runtime.invoke(iris, SETOSA, timeout=10, call_id=f"c{i}"), range(32))
        )
    assert answers == [{"species": 0}] * 32
    assert len(runtime._channels) == 1


@pytest.mark.mlserver
def test_wrong_shape_is_the_backends_error(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    three = OipMapping(
        inputs=(TensorInput(name="x", datatype="FP64", shape=(1, 3), paths=FEATURES[:3]),)
    )
    payload = dict(SETOSA, sepal_length=SECRET)
    with capture_logs() as logs, pytest.raises(BackendError) as info:
        runtime.invoke(model(mlserver.grpc_target, three), payload, timeout=10, call_id="c")
    assert info.value.message == "model backend demo/iris-classifier@1.0 failed the call (INTERNAL)"
    assert str(SECRET) not in repr(logs)
    assert logs[-1]["status"] == "INTERNAL"


@pytest.mark.mlserver
def test_unknown_remote_model_is_rejected(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    other = model(mlserver.grpc_target, PATHS_MAPPING, remote_model="no-such-model")
    with pytest.raises(BackendError, match=r"rejected the call \(NOT_FOUND\)"):
        runtime.invoke(other, SETOSA, timeout=10, call_id="c")


@pytest.mark.mlserver
def test_tiny_deadline_against_mlserver(
    mlserver: MLServerProcess, runtime: OpenInferenceRuntime
) -> None:
    iris = model(mlserver.grpc_target, PATHS_MAPPING)
    runtime.invoke(iris, SETOSA, timeout=10, call_id="warm")  # the channel is connected
    with pytest.raises(DeadlineExceeded):
        runtime.invoke(iris, SETOSA, timeout=0.0005, call_id="c")


def test_no_time_left_is_refused_before_calling(runtime: OpenInferenceRuntime) -> None:
    with pytest.raises(DeadlineExceeded, match="no time left"):
        runtime.invoke(model("127.0.0.1:1", PATHS_MAPPING), SETOSA, timeout=0, call_id="c")


def test_backend_down_is_unavailable(runtime: OpenInferenceRuntime) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Unavailable, match=r"demo/iris-classifier@1\.0 is unreachable"):
        runtime.invoke(model(f"127.0.0.1:{port}", PATHS_MAPPING), SETOSA, timeout=10, call_id="c")


def test_closed_runtime_refuses_calls() -> None:
    rt = OpenInferenceRuntime()
    rt.close()
    with pytest.raises(Unavailable, match="shut down"):
        rt.invoke(model("127.0.0.1:1", PATHS_MAPPING), SETOSA, timeout=1, call_id="c")


# --- fake Open Inference server ----------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[tuple[FakeBackend, str]]:
    backend = FakeBackend()
    server, port = serve(backend)
    try:
        yield backend, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_model_name_version_and_call_id_are_sent(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    backend, target = fake
    m = model(target, PATHS_MAPPING, remote_model="", remote_version="7")
    assert runtime.invoke(m, SETOSA, timeout=5, call_id="call-42") == {"species": 1}
    sent = backend.requests[-1]
    assert (sent.model_name, sent.model_version, sent.id) == ("iris-classifier", "7", "call-42")
    assert [o.name for o in sent.outputs] == ["predict"]


def test_deadline_cancels_the_outbound_call(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    backend, target = fake
    with pytest.raises(DeadlineExceeded, match="did not answer within the caller's deadline"):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="slow"), SETOSA, timeout=0.3, call_id="c"
        )
    assert backend.went_inactive.wait(5)


def test_buyer_going_away_cancels_the_outbound_call(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    backend, target = fake
    cancellers: list[Canceller] = []

    def buyer_leaves_once_backend_is_busy() -> None:
        # The backend may see the call before the runtime has handed over its canceller.
        backend.started.wait(60)
        while not cancellers:
            time.sleep(0.005)
        cancellers[0]()

    leaver = threading.Thread(target=buyer_leaves_once_backend_is_busy)
    leaver.start()
    # Cancelled (not DeadlineExceeded after the 120 s deadline) shows the cancel took effect.
    with pytest.raises(Cancelled, match="cancelled: the caller went away"):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="slow"),
            SETOSA,
            timeout=120,
            call_id="c",
            on_cancel=cancellers.append,
        )
    leaver.join()
    assert backend.went_inactive.wait(60)
    cancellers[0]()  # cancelling a finished call is harmless


def test_a_buyer_gone_before_the_call_cancels_it_at_once(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    # The server runs the canceller inside on_cancel when the buyer has already left
    # (broker_service._on_termination): the call must not wait for the backend.
    _, target = fake
    with pytest.raises(Cancelled, match="cancelled: the caller went away"):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="slow"),
            SETOSA,
            timeout=120,
            call_id="c",
            on_cancel=lambda cancel: cancel(),
        )


def test_a_failing_on_cancel_hook_cancels_the_call(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    backend, target = fake

    def broken(cancel: Canceller) -> None:
        backend.started.wait(60)  # the backend holds the call until it is cancelled
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="slow"),
            SETOSA,
            timeout=120,
            call_id="c",
            on_cancel=broken,
        )
    assert backend.went_inactive.wait(60)  # a call nobody will wait for is cancelled


def test_closing_the_runtime_ends_a_call_in_flight(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    backend, target = fake

    def close_once_backend_is_busy() -> None:
        backend.started.wait(60)
        runtime.close()

    closer = threading.Thread(target=close_once_backend_is_busy)
    closer.start()
    with pytest.raises(Unavailable, match="shut down"):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="slow"), SETOSA, timeout=120, call_id="c"
        )
    closer.join()
    assert backend.went_inactive.wait(60)


def test_canceller_after_the_answer_is_harmless(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    _, target = fake
    cancellers: list[Canceller] = []
    answer = runtime.invoke(
        model(target, PATHS_MAPPING), SETOSA, timeout=5, call_id="c", on_cancel=cancellers.append
    )
    cancellers[0]()
    assert answer == {"species": 1}


def test_answer_over_the_limit_is_a_backend_error(
    fake: tuple[FakeBackend, str], segregated: bool
) -> None:
    _, target = fake
    rt = OpenInferenceRuntime(BackendsConfig(max_answer_bytes=4096), segregated_calls=segregated)
    try:
        with pytest.raises(BackendError, match="sent an answer over 4096 bytes"):
            rt.invoke(
                model(target, OipMapping(inputs=PATHS_MAPPING.inputs), remote_model="big"),
                SETOSA,
                timeout=5,
                call_id="c",
            )
    finally:
        rt.close()


def test_overloaded_backend_is_resource_exhausted(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    _, target = fake
    with pytest.raises(ResourceExhausted, match="overloaded"):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="overloaded"), SETOSA, timeout=5, call_id="c"
        )


def test_backend_details_are_neither_shown_nor_logged(
    fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime
) -> None:
    _, target = fake
    with capture_logs() as logs, pytest.raises(BackendError) as info:
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="picky"), SETOSA, timeout=5, call_id="c"
        )
    assert info.value.message.endswith("rejected the call (INVALID_ARGUMENT)")
    assert str(SECRET) not in info.value.message
    assert str(SECRET) not in repr(logs)


def test_no_retries(fake: tuple[FakeBackend, str], runtime: OpenInferenceRuntime) -> None:
    backend, target = fake
    with pytest.raises(ResourceExhausted):
        runtime.invoke(
            model(target, PATHS_MAPPING, remote_model="overloaded"), SETOSA, timeout=5, call_id="c"
        )
    assert len(backend.requests) == 1


def test_tls_with_the_endpoints_ca(runtime: OpenInferenceRuntime) -> None:
    cert, key = self_signed()
    backend = FakeBackend()
    server, port = serve(backend, grpc.ssl_server_credentials([(key, cert)]))
    try:
        trusted = model(f"localhost:{port}", PATHS_MAPPING, tls=True, tls_ca_pem=cert.decode())
        assert runtime.invoke(trusted, SETOSA, timeout=5, call_id="c") == {"species": 1}
        # Without the CA the server is not trusted and the call never reaches it.
        untrusted = model(f"localhost:{port}", PATHS_MAPPING, tls=True)
        with pytest.raises(Unavailable):
            runtime.invoke(untrusted, SETOSA, timeout=5, call_id="c")
        assert len(backend.requests) == 1
    finally:
        server.stop(grace=None)
