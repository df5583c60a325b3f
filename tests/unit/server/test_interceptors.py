"""The boundary interceptor keeps one wrapped handler per servicer handler.

grpcio asks the interceptor for a handler on every call; the wrapper is built once per handler
and must never outlive the handler it wraps. The RPC behaviour of the wrapper (authentication,
status mapping, the ``rpc`` event) is tested against real servers in tests/integration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from structlog.testing import capture_logs

from broker.auth.principal import Principal, Role
from broker.server.context import current_principal
from broker.server.interceptors import BoundaryInterceptor

METHOD = "/broker.v1.Broker/Invoke"
PRINCIPAL = Principal(
    tenant="acme", subject="buyer-1", roles=frozenset({Role.BUYER}), issuer="i", expires_at=0.0
)


@dataclass
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class Context:
    """The parts of ``grpc.ServicerContext`` the boundary uses on a successful call."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer t"),)

    def is_active(self) -> bool:
        return True


def handler(answer: str) -> Any:
    def behavior(request: bytes, context: Any) -> str:
        return f"{answer}:{request.decode()}:{current_principal().tenant}"

    return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=bytes)


def test_the_wrapper_is_built_once_per_handler() -> None:
    interceptor = BoundaryInterceptor(lambda metadata: PRINCIPAL)
    served = handler("a")
    first = interceptor.intercept_service(lambda d: served, Details(METHOD))
    second = interceptor.intercept_service(lambda d: served, Details(METHOD))
    assert first is second
    assert first is not served  # it is wrapped: authenticated, mapped, logged
    assert first is not None and first.unary_unary is not None
    with capture_logs() as logs:
        assert first.unary_unary(b"x", Context()) == "a:x:acme"
    assert [event["event"] for event in logs] == ["rpc"]


def test_a_new_handler_for_the_same_method_gets_its_own_wrapper() -> None:
    interceptor = BoundaryInterceptor(lambda metadata: PRINCIPAL)
    old = interceptor.intercept_service(lambda d: handler("old"), Details(METHOD))
    new = interceptor.intercept_service(lambda d: handler("new"), Details(METHOD))
    assert old is not new
    assert new is not None and new.unary_unary is not None
    assert new.unary_unary(b"y", Context()) == "new:y:acme"


def test_unknown_methods_are_not_kept() -> None:
    interceptor = BoundaryInterceptor(lambda metadata: PRINCIPAL)
    for i in range(3):
        assert interceptor.intercept_service(lambda d: None, Details(f"/x.Y/M{i}")) is None
    assert len(interceptor._wrapped) == 0


def test_public_services_are_passed_through_unwrapped() -> None:
    interceptor = BoundaryInterceptor(lambda metadata: PRINCIPAL)
    served = handler("health")
    method = "/grpc.health.v1.Health/Check"
    assert interceptor.intercept_service(lambda d: served, Details(method)) is served
    assert interceptor.intercept_service(lambda d: served, Details(method)) is served
