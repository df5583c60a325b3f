"""``broker.v1.Policies``: the security team's window on the active policy."""

from __future__ import annotations

import grpc
import orjson

from broker._proto.broker.v1 import policies_pb2, policies_pb2_grpc
from broker.auth.principal import Role, require_role
from broker.errors import InvalidArgument
from broker.policy import PolicyInput, PolicyStore
from broker.server.context import current_principal

MAX_INPUT_BYTES = 1024 * 1024


class PoliciesServicer(policies_pb2_grpc.PoliciesServicer):
    """Read the active revision, evaluate an input, reload the bundle (policy-admin)."""

    def __init__(self, store: PolicyStore, *, engine: str, rule: str) -> None:
        self._store = store
        self._engine = engine
        self._rule = rule

    def GetActivePolicy(  # noqa: N802 - gRPC method name
        self, request: policies_pb2.GetActivePolicyRequest, context: grpc.ServicerContext
    ) -> policies_pb2.GetActivePolicyResponse:
        """The active revision, engine and rule."""
        require_role(current_principal(), Role.POLICY_ADMIN, Role.ADMIN)
        return policies_pb2.GetActivePolicyResponse(
            revision=self._store.revision or "", engine=self._engine, rule=self._rule
        )

    def EvaluatePolicy(  # noqa: N802 - gRPC method name
        self, request: policies_pb2.EvaluatePolicyRequest, context: grpc.ServicerContext
    ) -> policies_pb2.EvaluatePolicyResponse:
        """Run the active policy on the given input and return the checked plan."""
        require_role(current_principal(), Role.POLICY_ADMIN, Role.ADMIN)
        if len(request.input_json) > MAX_INPUT_BYTES:
            raise InvalidArgument(f"input_json is over the limit of {MAX_INPUT_BYTES} bytes")
        try:
            document = orjson.loads(request.input_json)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"input_json is not valid JSON: {exc}") from None
        plan = self._store.decide(PolicyInput.from_json_obj(document))
        return policies_pb2.EvaluatePolicyResponse(plan_json=orjson.dumps(plan.to_json_obj()))

    def ReloadPolicy(  # noqa: N802 - gRPC method name
        self, request: policies_pb2.ReloadPolicyRequest, context: grpc.ServicerContext
    ) -> policies_pb2.ReloadPolicyResponse:
        """Reload the bundle now; the old revision stays active if the new one fails."""
        require_role(current_principal(), Role.POLICY_ADMIN, Role.ADMIN)
        outcome = self._store.reload()
        return policies_pb2.ReloadPolicyResponse(
            status=outcome.status, revision=outcome.revision or "", error=outcome.error or ""
        )
