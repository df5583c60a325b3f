"""Python client for buyer services and vendors.

    from broker.client import BrokerClient

    with BrokerClient("127.0.0.1:50051", token=my_token) as client:
        answer = client.invoke("acme/iris@1.0.0", {"sepal_length": 5.1, ...}, timeout=5)
        print(answer.call_id, answer.answer)

The client sends the bearer token on every call, sets a deadline on every call, and retries
only UNAVAILABLE, which the broker answers only when the call did nothing (the model backend
or a store could not be reached); every other status is raised at once as ``grpc.RpcError``.
Retries back off exponentially and never outlive the caller's deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import orjson

from broker._proto.broker.v1 import (
    broker_pb2,
    broker_pb2_grpc,
    models_pb2,
    registry_pb2,
    registry_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from broker.closing import ClosedOnExit

T = TypeVar("T")
TokenSource = str | Callable[[], str]


@dataclass(frozen=True, slots=True)
class InvokeAnswer:
    """A model's answer as the buyer receives it, with what the policy did to each field."""

    call_id: str
    model: str
    answer: dict[str, Any]
    decisions: tuple[broker_pb2.FieldDecision, ...] = ()
    policy_revision: str = ""
    restored_values: int = 0


Labels = Mapping[str, Sequence[str]]


class BrokerClient(ClosedOnExit):
    """A connection to one broker, for Invoke, the catalogue and the registry."""

    def __init__(
        self,
        target: str,
        *,
        token: TokenSource,
        root_certificates: bytes | None = None,
        client_certificate: tuple[bytes, bytes] | None = None,
        max_attempts: int = 3,
        initial_backoff: float = 0.05,
        channel: grpc.Channel | None = None,
    ) -> None:
        """Connect to ``target`` ("host:port").

        TLS is used when ``root_certificates`` is given (with ``client_certificate`` as
        (key PEM, certificate PEM) for mutual TLS); otherwise the channel is plaintext, which
        is only suitable on loopback.
        """
        if channel is None:
            if root_certificates is not None:
                key, cert = client_certificate or (None, None)
                credentials = grpc.ssl_channel_credentials(root_certificates, key, cert)
                channel = grpc.secure_channel(target, credentials)
            else:
                channel = grpc.insecure_channel(target)
        self._channel = channel
        self._token = token
        self._max_attempts = max(1, max_attempts)
        self._initial_backoff = initial_backoff
        self.broker = broker_pb2_grpc.BrokerStub(channel)
        self.registry = registry_pb2_grpc.RegistryStub(channel)
        self.usage = usage_pb2_grpc.UsageStub(channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def invoke(
        self,
        model: str,
        payload: dict[str, Any] | bytes,
        *,
        purpose: str = "",
        labels: Labels | None = None,
        timeout: float = 30.0,
    ) -> InvokeAnswer:
        """Call ``model`` ("vendor/name@version" or "vendor/name") with a JSON payload.

        ``labels`` adds the buyer's own labels to fields, keyed by JSON Pointer
        (``{"/customer/note": ["confidential"]}``); ``purpose`` tells the policy why.
        """
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        request = broker_pb2.InvokeRequest(model=model, json=data, purpose=purpose)
        _add_labels(request, labels)
        response: broker_pb2.InvokeResponse = self._call(self.broker.Invoke, request, timeout)
        return InvokeAnswer(
            response.call_id,
            response.model,
            orjson.loads(response.json),
            tuple(response.decisions),
            response.policy_revision,
            response.restored_values,
        )

    def preview(
        self,
        model: str,
        payload: dict[str, Any] | bytes,
        *,
        purpose: str = "",
        labels: Labels | None = None,
        timeout: float = 30.0,
    ) -> broker_pb2.PreviewResponse:
        """What Invoke would do to each field, without calling the model."""
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        request = broker_pb2.PreviewRequest(model=model, json=data, purpose=purpose)
        _add_labels(request, labels)
        response: broker_pb2.PreviewResponse = self._call(self.broker.Preview, request, timeout)
        return response

    def list_models(
        self, *, vendor: str = "", timeout: float = 10.0
    ) -> Iterator[models_pb2.CatalogModel]:
        """Every listed model in the catalogue, page by page."""
        return self._pages(
            self.broker.ListModels,
            lambda token: broker_pb2.ListModelsRequest(vendor=vendor, page_token=token),
            timeout,
        )

    def register_model(self, model: models_pb2.Model, *, timeout: float = 10.0) -> models_pb2.Model:
        """Register a new model version (vendor role)."""
        request = registry_pb2.RegisterModelRequest(model=model)
        response: registry_pb2.RegisterModelResponse = self._call(
            self.registry.RegisterModel, request, timeout
        )
        return response.model

    def retire_model(self, ref: str, *, timeout: float = 10.0) -> models_pb2.Model:
        """Retire a model version (vendor role); final."""
        request = registry_pb2.RetireModelRequest(ref=ref)
        response: registry_pb2.RetireModelResponse = self._call(
            self.registry.RetireModel, request, timeout
        )
        return response.model

    def vendor_models(
        self, *, vendor: str = "", timeout: float = 10.0
    ) -> Iterator[models_pb2.Model]:
        """The caller's own model versions in every status (vendor role)."""
        return self._pages(
            self.registry.ListVendorModels,
            lambda token: registry_pb2.ListVendorModelsRequest(vendor=vendor, page_token=token),
            timeout,
        )

    def usage_report(
        self, month: str, *, tenant: str = "", vendor: str = "", timeout: float = 30.0
    ) -> tuple[list[usage_pb2.UsageRecord], list[usage_pb2.UsageTotal]]:
        """Every usage record of ``month`` ("YYYY-MM", UTC) and its totals per currency.

        A buyer's invoice (``tenant``: its own, the default) or a vendor's statement
        (``vendor``: its own name); see ``broker.v1.Usage``.
        """
        records: list[usage_pb2.UsageRecord] = []
        token = ""
        while True:
            request = usage_pb2.UsageReportRequest(
                month=month, tenant=tenant, vendor=vendor, page_token=token
            )
            page: usage_pb2.UsageReportResponse = self._call(self.usage.Report, request, timeout)
            records.extend(page.records)
            token = page.next_page_token
            if not token:
                return records, list(page.totals)

    def _pages(
        self, method: Callable[..., Any], request_for: Callable[[str], Any], timeout: float
    ) -> Iterator[Any]:
        """Follow ``next_page_token`` from the first page to the last, yielding each item."""
        token = ""
        while True:
            page = self._call(method, request_for(token), timeout)
            yield from page.models
            token = page.next_page_token
            if not token:
                return

    def _call(self, method: Callable[..., T], request: Any, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        backoff = self._initial_backoff
        for attempt in range(1, self._max_attempts + 1):
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.0), metadata=self._metadata())
            except grpc.RpcError as exc:
                retryable = exc.code() is grpc.StatusCode.UNAVAILABLE
                sleep = backoff * (1 + random.random())  # noqa: S311 - jitter, not crypto
                if (
                    not retryable
                    or attempt == self._max_attempts
                    or (time.monotonic() + sleep >= deadline)
                ):
                    raise
                time.sleep(sleep)
                backoff *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),)


def _add_labels(
    request: broker_pb2.InvokeRequest | broker_pb2.PreviewRequest, labels: Labels | None
) -> None:
    for path, names in (labels or {}).items():
        request.labels[path].labels.extend(names)
