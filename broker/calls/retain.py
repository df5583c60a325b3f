"""Keep a call's request and answer when the policy says so: one rule for every call path.

The policy's plan carries ``retention: {request_ttl_s, response_ttl_s}``. A call whose plan asks
to keep something is refused before anything is sent when this broker keeps nothing (no
``[retention]`` root key): fail closed, the buyer's compliance promise is not silently dropped.
Otherwise, once the answer is known, the request as the buyer sent it and the answer as the
buyer got it are stored encrypted (``RetentionStore.retain``: one record per half, both in one
transaction), and the record ids are returned for the caller and the log context.

``Invoke`` and ``InvokeStream`` both use these functions, and both list the record ids in the
call's audit outcome entry (``retained_record_ids``).
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
import structlog

from broker.auth.principal import Principal
from broker.errors import FailedPrecondition, Internal, Unavailable
from broker.policy import Plan
from broker.registry.model import ModelVersion
from broker.retention.keyring import KeyringCorrupt
from broker.retention.records import RetentionStore


def wants_retention(plan: Plan) -> bool:
    """Whether the plan asks to keep the request or the answer."""
    return bool(plan.retention.request_ttl_s or plan.retention.response_ttl_s)


def refuse_unkeepable(plan: Plan, store: RetentionStore | None) -> None:
    """Fail closed when the policy demands retention that this broker cannot provide."""
    if store is None and wants_retention(plan):
        raise FailedPrecondition(
            "the policy requires this call to be retained, but this broker keeps nothing "
            "(no [retention] root key is configured); nothing was sent"
        )


def retain_call(
    store: RetentionStore | None,
    plan: Plan,
    *,
    principal: Principal,
    model: ModelVersion,
    call_id: str,
    request: Any,
    answer: Any,
) -> tuple[str, ...]:
    """Store the halves the plan keeps (``request``, ``answer``: JSON values); their record ids.

    A database failure becomes ``Unavailable`` and a damaged tenant key ``Internal`` (the call's
    outcome is then audited with it); the messages name no value.
    """
    ttl = plan.retention
    if store is None or not wants_retention(plan):
        return ()
    try:
        records = store.retain(
            tenant=principal.tenant,
            subject=principal.subject,
            call_id=call_id,
            model=model.ref,
            request=orjson.dumps(request) if ttl.request_ttl_s else None,
            response=orjson.dumps(answer) if ttl.response_ttl_s else None,
            request_ttl_s=ttl.request_ttl_s,
            response_ttl_s=ttl.response_ttl_s,
        )
    except sa.exc.SQLAlchemyError as exc:
        raise Unavailable(
            "the call's retained records cannot be written: the database is unavailable",
            log_reason=type(exc).__name__,
        ) from exc
    except KeyringCorrupt as exc:
        raise Internal("the tenant's retention key is unusable", log_reason=str(exc)) from exc
    ids = tuple(record.record_id for record in records)
    structlog.contextvars.bind_contextvars(retained=list(ids))
    return ids
