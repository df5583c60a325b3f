"""Policy decision: the Rego contract, engines (regorus, embedded OPA, an OPA server), bundles,
plan cache, tests.

Callers use :class:`PolicyStore` (``decide``, ``reload``, ``revision``); everything that goes
wrong below it is a :class:`PolicyError`, a ``PermissionDenied``, so the call is denied.
"""

from broker.policy.bundle import Bundle, PolicyStore, ReloadOutcome, load_bundle
from broker.policy.cache import CacheStats, PlanCache
from broker.policy.contract import (
    ACTIONS,
    Action,
    EntityInfo,
    FieldInfo,
    ModelInfo,
    Plan,
    PolicyError,
    PolicyInput,
    PolicyLoadError,
    PrincipalInfo,
    Retention,
    parse_plan,
)
from broker.policy.engine import OpaEngine, PolicyEngine, RegorusEngine
from broker.policy.opa_embedded import OpaEmbeddedEngine

__all__ = [
    "ACTIONS",
    "Action",
    "Bundle",
    "CacheStats",
    "EntityInfo",
    "FieldInfo",
    "ModelInfo",
    "OpaEmbeddedEngine",
    "OpaEngine",
    "Plan",
    "PlanCache",
    "PolicyEngine",
    "PolicyError",
    "PolicyInput",
    "PolicyLoadError",
    "PolicyStore",
    "PrincipalInfo",
    "RegorusEngine",
    "ReloadOutcome",
    "Retention",
    "load_bundle",
    "parse_plan",
]
