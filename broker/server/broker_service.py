"""``broker.v1.Broker``: the buyer-facing servicer. It translates protobuf and delegates."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.calls.invoke import Invoker
from broker.calls.payload import (
    PayloadLimits,
    dump_json,
    parse_json_payload,
    parse_struct_payload,
    to_struct,
)
from broker.errors import InvalidArgument
from broker.registry.convert import catalog_model_to_proto
from broker.registry.store import RegistryStore
from broker.server.context import current_principal


class BrokerServicer(broker_pb2_grpc.BrokerServicer):
    """Invoke models and browse the catalogue."""

    def __init__(self, invoker: Invoker, store: RegistryStore, limits: PayloadLimits) -> None:
        self._invoker = invoker
        self._store = store
        self._limits = limits

    def Invoke(  # noqa: N802 - gRPC method name
        self, request: broker_pb2.InvokeRequest, context: grpc.ServicerContext
    ) -> broker_pb2.InvokeResponse:
        """Call a model with the request's payload and return its answer."""
        principal = current_principal()
        kind = request.WhichOneof("payload")
        if kind == "json":
            payload = parse_json_payload(request.json, self._limits)
        elif kind == "struct":
            payload = parse_struct_payload(request.struct, self._limits)
        else:
            raise InvalidArgument("payload is missing: set `json` (JSON bytes) or `struct`")
        if not request.model:
            raise InvalidArgument("model is missing: name it as vendor/name@version")
        result = self._invoker.invoke(
            principal,
            request.model,
            payload,
            time_remaining=context.time_remaining(),
            on_cancel=lambda cancel: _on_termination(context, cancel),
        )
        response = broker_pb2.InvokeResponse(call_id=result.call_id, model=result.model.ref)
        if kind == "struct":
            response.struct.CopyFrom(to_struct(result.answer))
        else:
            response.json = dump_json(result.answer)
        return response

    def ListModels(  # noqa: N802 - gRPC method name
        self, request: broker_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> broker_pb2.ListModelsResponse:
        """Page through the listed models of every vendor (any authenticated caller)."""
        current_principal()
        models, next_token = self._store.list_catalog(
            request.vendor or None, request.page_size, request.page_token
        )
        return broker_pb2.ListModelsResponse(
            models=[catalog_model_to_proto(model) for model in models],
            next_page_token=next_token,
        )


def _on_termination(context: grpc.ServicerContext, cancel: Callable[[], None]) -> None:
    """Run ``cancel`` when the RPC ends, so a buyer who goes away stops the backend call too.

    grpcio calls RPC callbacks on every termination; cancelling a finished call is a no-op.
    """
    context.add_callback(cancel)
