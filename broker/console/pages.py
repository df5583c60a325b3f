"""The console's pages: search, entry detail and its proof, charts, export, retention.

Each handler takes the officer's session first (role checked), then calls the broker with the
session's token. Handlers are plain functions, which Starlette runs in its thread pool, since
the gRPC calls block.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from broker._proto.broker.v1 import audit_pb2, retention_pb2
from broker.auth.principal import Role
from broker.console import views
from broker.console.backend import Backend, BackendError
from broker.console.search import PAGE_SIZES, Search, SearchError, sort_entries
from broker.console.sessions import Session


class Console(Protocol):
    """What the pages use of the console (``app.Console`` has it), named here so that the app,
    which mounts these pages, sits above this module and not in a circle with it."""

    backend: Backend
    pinned_vkey: str | None

    def session(self, request: Request, *, admin: bool = False) -> Session: ...

    async def checked_form(self, request: Request, session: Session) -> dict[str, str]: ...

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response: ...


KINDS: Final = (
    "call.intent",
    "call.outcome",
    "call.preview",
    "admin.retention.held",
    "admin.retention.released",
    "admin.retention.erased",
    "admin.retention.deleted",
    "admin.audit.viewed",
    "admin.model.registered",
    "admin.policy.activated",
)
#: Export formats: the broker's verifiable bundles (JSONL, CSV) and OCSF events for a SIEM.
_EXPORT_TYPES: Final = {
    "jsonl": ("application/x-ndjson", "jsonl"),
    "csv": ("text/csv", "csv"),
    "ocsf": ("application/x-ndjson", "ocsf.jsonl"),
}
_MAX_REASON: Final = 1024


def _search(console: Console, request: Request) -> Search | Response:
    try:
        return Search.from_query(request.query_params)
    except SearchError as exc:
        return console.render(request, "error.html", {"status": 400, "message": str(exc)}, 400)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def home(request: Request) -> Response:
    console = _console(request)
    console.session(request)
    return RedirectResponse("/entries", status_code=303)


def entries(request: Request) -> Response:
    console = _console(request)
    session = console.session(request)
    search = _search(console, request)
    if isinstance(search, Response):
        return search
    found, next_token = console.backend.query(
        session.token,
        search.to_filter(),
        page_size=search.page_size,
        page_token=search.page_token,
        order=search.server_order(),
    )
    if not search.sorted_by_server:
        sort_entries(found, search.sort, search.descending)
    return console.render(
        request,
        "entries.html",
        {
            "search": search,
            "entries": found,
            "next_link": search.query_string(page=next_token) if next_token else "",
            "first_link": search.query_string(page="") if search.page_token else "",
            "utc": views.utc,
            "kinds": KINDS,
            "page_sizes": PAGE_SIZES,
        },
    )


def entry(request: Request) -> Response:
    console = _console(request)
    session = console.session(request)
    leaf = _leaf(request)
    item = console.backend.get_entry(session.token, leaf)  # the broker audits this view
    body = views.body_of(item)
    ids = views.record_ids(body)
    states: list[views.RecordState] = []
    retention_note = ""
    if ids:
        try:
            states = _record_states(console, session.token, session.principal, item, ids)
        except BackendError as exc:
            retention_note = f"retention records unavailable ({exc.code})"
    return console.render(
        request,
        "entry.html",
        {
            "entry": item,
            "body": body,
            "fields": views.decision_rows(body.get("fields") or []),
            "label_counts": views.label_counts(body.get("fields") or []),
            "entity_counts": views.entity_counts(body.get("fields") or []),
            "details": body.get("details") or {},
            "entry_hash": item.entry_hash.hex(),
            "states": states,
            "retention_note": retention_note,
            "utc": views.utc,
        },
    )


def proof(request: Request) -> Response:
    """The proof for the in-browser verifier, with the key to check it against.

    With ``console.log_vkey`` set, that pinned key is the one given, whatever the broker serves
    (``broker_vkey_matches`` says whether the broker's agrees), so a broker, or anyone between
    it and the console, that signs with a key of its own fails verification.
    """
    console = _console(request)
    session = console.session(request)
    found = console.backend.proof(session.token, _leaf(request))
    pinned = console.pinned_vkey
    return JSONResponse(
        {
            "leaf_index": found.leaf_index,
            "entry": base64.b64encode(found.entry).decode("ascii"),
            "hashes": [base64.b64encode(h).decode("ascii") for h in found.hashes],
            "checkpoint": found.checkpoint,
            "tree_size": found.tree_size,
            "vkey": pinned or found.vkey,
            "vkey_source": "pinned" if pinned else "broker",
            "broker_vkey_matches": pinned is None or pinned == found.vkey,
        }
    )


def charts(request: Request) -> Response:
    console = _console(request)
    console.session(request)
    search = _search(console, request)
    if isinstance(search, Response):
        return search
    data_url = "/charts/data.json?" + search.query_string(page="", sort="", size="")
    return console.render(
        request, "charts.html", {"search": search, "data_url": data_url, "kinds": KINDS}
    )


def chart_data(request: Request) -> Response:
    console = _console(request)
    session = console.session(request)
    search = _search(console, request)
    if isinstance(search, Response):
        return search
    counts = console.backend.aggregate(session.token, search.to_filter())
    return JSONResponse(views.chart_data(counts))


def export(request: Request) -> Response:
    console = _console(request)
    session = console.session(request)
    search = _search(console, request)
    if isinstance(search, Response):
        return search
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in _EXPORT_TYPES:
        return console.render(
            request, "error.html", {"status": 400, "message": "format is jsonl, csv or ocsf"}, 400
        )
    chunks = console.backend.export(session.token, search.to_filter(), fmt)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media_type, suffix = _EXPORT_TYPES[fmt]
    return StreamingResponse(
        chunks,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="audit-{stamp}.{suffix}"'},
    )


def retention(request: Request) -> Response:
    console = _console(request)
    session = console.session(request)
    admin = session.principal.has_role(Role.ADMIN)
    tenant = request.query_params.get("tenant", "")
    note = ""
    try:
        records = console.backend.list_records(
            session.token, tenant=tenant or ("*" if admin else "")
        )
    except BackendError as exc:
        records, note = [], f"{exc.code}: {exc.message}"
    flt = audit_pb2.AuditFilter(tenant=tenant if tenant != "*" else "")
    actions = []
    for kind in ("admin.retention.held", "admin.retention.released", "admin.retention.erased"):
        flt.kind = kind
        page, _ = console.backend.query(session.token, flt, page_size=100)
        actions.extend(page)
    actions.sort(key=lambda e: e.leaf_index, reverse=True)
    now = datetime.now(UTC)
    return console.render(
        request,
        "retention.html",
        {
            "records": [
                (r, r.due_time.ToDatetime(tzinfo=UTC), r.due_time.ToDatetime(tzinfo=UTC) <= now)
                for r in records
            ],
            "actions": [(a, views.body_of(a)) for a in actions],
            "admin": admin,
            "tenant": tenant,
            "note": note,
            "message": request.query_params.get("done", ""),
            "utc": views.utc,
        },
    )


async def retention_action(request: Request) -> Response:
    console = _console(request)
    session = console.session(request, admin=True)
    form = await console.checked_form(request, session)
    reason = form.get("reason", "").strip()
    if not reason or len(reason) > _MAX_REASON:
        return console.render(
            request,
            "error.html",
            {"status": 400, "message": "a reason (up to 1024 characters) is required"},
            400,
        )
    action = request.path_params["action"]
    done = await _run_action(console, session.token, action, form, reason)
    return RedirectResponse(f"/retention?done={done}", status_code=303)


def routes() -> list[Route]:
    """Every page route of the console."""
    return [
        Route("/", home),
        Route("/entries", entries),
        Route("/entries/{leaf:int}", entry),
        Route("/entries/{leaf:int}/proof.json", proof),
        Route("/charts", charts),
        Route("/charts/data.json", chart_data),
        Route("/export", export),
        Route("/retention", retention),
        Route("/retention/{action:str}", retention_action, methods=["POST"]),
    ]


async def _run_action(
    console: Console, token: str, action: str, form: dict[str, str], reason: str
) -> str:
    """Hold, release or erase as the form says; the text the retention page confirms with."""
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415 - only POSTs need it

    record_id, tenant = form.get("record_id", "").strip(), form.get("tenant", "").strip()
    if action in {"hold", "release"}:
        if bool(record_id) == bool(tenant):
            raise BackendError(400, "INVALID_ARGUMENT", "name a record id or a tenant")
        target = (
            retention_pb2.HoldTarget(record_id=record_id)
            if record_id
            else retention_pb2.HoldTarget(tenant=tenant)
        )
        await run_in_threadpool(console.backend.hold, token, target, reason, held=action == "hold")
        return f"{action} recorded for {record_id or 'tenant ' + tenant}"
    if action == "erase":
        result = await run_in_threadpool(
            lambda: console.backend.erase(
                token, tenant=tenant, subject=form.get("subject", "").strip(), reason=reason
            )
        )
        return f"erasure: {result.records_erased} erased, {result.records_held} kept by holds"
    raise BackendError(404, "NOT_FOUND", f"no retention action {action[:32]!r}")


def _leaf(request: Request) -> int:
    leaf = request.path_params["leaf"]
    assert isinstance(leaf, int)
    return leaf


def _record_states(
    console: Console, token: str, principal: Any, item: audit_pb2.AuditEntry, ids: list[str]
) -> list[views.RecordState]:
    """Where each record an entry names stands: listed by Retention, or receipted as deleted."""
    tenant = item.tenant if principal.has_role(Role.ADMIN) else ""
    records = console.backend.list_records(token, tenant=tenant, call_id=item.call_id)
    listed = {r.record_id for r in records}
    receipts = {}
    for record_id in ids:
        if record_id in listed:
            continue
        flt = audit_pb2.AuditFilter(kind="admin.retention.deleted", model=record_id, tenant=tenant)
        page, _ = console.backend.query(token, flt, page_size=1)
        if page:
            receipts[record_id] = page[0]
    return views.record_states(ids, records, receipts, datetime.now(UTC))
