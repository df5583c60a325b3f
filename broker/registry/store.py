"""The registry store: model versions in the database, on SQLite or PostgreSQL.

The store knows nothing of principals: the servicer decides who may touch which vendor and then
calls it. What the store guarantees is consistency under concurrency:

- ``register`` writes vendor, model and version in one transaction. Vendor and model rows are
  inserted with ``ON CONFLICT DO NOTHING`` so two first registrations of a model do not fail
  each other, and the version insert relies on the unique ``(model_id, version)`` constraint:
  when two callers race, the loser's IntegrityError rolls its whole transaction back and becomes
  AlreadyExists, so exactly one row is left and nothing half-written.
- ``update`` and ``retire`` read and write in one transaction holding the row (``FOR UPDATE``
  on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two updates cannot both pass the status
  check.

Page tokens are opaque to callers: URL-safe base64 of JSON holding the list they belong to and
the sort key of the last row returned. Listing continues strictly after that key (keyset
pagination), so rows added meanwhile neither repeat nor shift a page.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from packaging.version import InvalidVersion, Version
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from broker.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from broker.registry.model import ModelStatus, ModelVersion
from broker.registry.refs import ModelRef, check_name, check_vendor, check_version, not_found
from broker.registry.tables import (
    ModelRow,
    ModelVersionRow,
    VendorRow,
    apply_to_row,
    new_row,
    to_domain,
)
from broker.registry.validation import check_status_on_register, validate_model
from broker.storage.db import for_writes

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
#: Keys ``update`` accepts in ``changes``; values have the type of the ModelVersion field.
UPDATABLE: Final = frozenset(
    {"description", "endpoint", "fields", "oip_mapping", "pricing", "status"}
)

_Select = Any  # sqlmodel's typed Select of a tuple; spelled out it only adds noise


def _utcnow() -> datetime:
    return datetime.now(UTC)


def version_sort_key(version: str) -> tuple[Any, ...]:
    """Order versions as people expect: ``1.10.0`` after ``1.9.0``.

    Versions that parse under PEP 440 (``packaging.version.Version``, which also accepts most
    SemVer-like strings) are ordered by it and rank above any that do not parse; those are
    ordered as plain strings. Ties in PEP 440 order (``1.0`` and ``1.0.0``) fall back to the
    string, so the order is total and stable. Pre-releases count: a LISTED ``2.0.0rc1`` is
    newer than ``1.9``, because listing it is the vendor's statement that it may be called.
    """
    try:
        return (1, Version(version), version)
    except InvalidVersion:
        return (0, version)


class RegistryStore:
    """Model versions on one Engine; every method is one transaction."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Callable[[], datetime] = _utcnow,
        check: Callable[[ModelVersion], None] | None = None,
    ) -> None:
        """``check``: a further check of every registered or updated version (InvalidArgument),
        from a layer above; the server passes the runtimes' tensor-mapping compile check."""
        self._engine = engine
        self._writer = for_writes(engine)
        self._clock = clock
        self._check = check

    def register(self, mv: ModelVersion) -> ModelVersion:
        """Store a new version; AlreadyExists if ``vendor/name@version`` is taken.

        ``create_time`` and ``update_time`` of ``mv`` are ignored and set to now.
        """
        validate_model(mv)
        if self._check is not None:
            self._check(mv)
        check_status_on_register(mv.status)
        now = self._clock()
        try:
            with Session(self._writer) as session, session.begin():
                vendor_id = self._ensure(session, VendorRow, {"name": mv.vendor}, now)
                model_id = self._ensure(
                    session, ModelRow, {"vendor_id": vendor_id, "name": mv.name}, now
                )
                session.add(new_row(model_id, mv, now))
                session.flush()
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"model {mv.ref} already exists") from exc
        return dataclasses.replace(mv, create_time=now, update_time=now)

    def get(self, vendor: str, name: str, version: str) -> ModelVersion:
        """One version in any status; NotFound if absent."""
        ref = ModelRef(vendor, name, version)
        _check_ref(ref)
        with Session(self._engine) as session:
            found = session.exec(_by_ref(ref)).first()
            if found is None:
                raise NotFound(not_found(ref))
            return to_domain(*found)

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        """The version ``ref`` names, or the newest LISTED version when it names none.

        With ``callable_only`` (the invoke path) a RETIRED version is FailedPrecondition and a
        DRAFT one is NotFound, since buyers must not learn of unpublished versions. Without it
        (a vendor looking at its own models) any status is returned. "Newest" follows
        ``version_sort_key``.
        """
        _check_ref(ref)
        if ref.version is not None:
            mv = self.get(ref.vendor, ref.name, ref.version)
            if callable_only and mv.status is ModelStatus.RETIRED:
                raise FailedPrecondition(f"model {mv.ref} is retired")
            if callable_only and mv.status is ModelStatus.DRAFT:
                raise NotFound(not_found(ref))
            return mv
        with Session(self._engine) as session:
            stmt = _by_ref(ref).where(col(ModelVersionRow.status) == ModelStatus.LISTED.value)
            rows = session.exec(stmt).all()
        if not rows:
            raise NotFound(not_found(ref))
        newest = max(rows, key=lambda found: version_sort_key(found[0].version))
        return to_domain(*newest)

    def list_catalog(
        self, vendor: str | None, page_size: int, page_token: str
    ) -> tuple[list[ModelVersion], str]:
        """LISTED versions of every vendor (or one), ordered by vendor, name and version."""
        if vendor is not None:
            check_vendor(vendor)
        scope = f"catalog:{vendor or ''}"
        after = _decode_token(page_token, scope, 3)
        stmt = _joined().where(col(ModelVersionRow.status) == ModelStatus.LISTED.value)
        if vendor is not None:
            stmt = stmt.where(col(VendorRow.name) == vendor)
        keys = (col(VendorRow.name), col(ModelRow.name), col(ModelVersionRow.version))
        return self._page(stmt, keys, after, page_size, scope)

    def list_vendor(
        self, vendor: str, page_size: int, page_token: str
    ) -> tuple[list[ModelVersion], str]:
        """Every version of one vendor in any status, ordered by name and version."""
        check_vendor(vendor)
        scope = f"vendor:{vendor}"
        after = _decode_token(page_token, scope, 2)
        stmt = _joined().where(col(VendorRow.name) == vendor)
        keys = (col(ModelRow.name), col(ModelVersionRow.version))
        return self._page(stmt, keys, after, page_size, scope)

    def update(
        self, vendor: str, name: str, version: str, changes: Mapping[str, Any]
    ) -> ModelVersion:
        """Apply ``changes`` (keys from ``UPDATABLE``, values of the ModelVersion field types).

        Status may only move between DRAFT and LISTED: retiring goes through ``retire`` and a
        retired version cannot be changed at all (FailedPrecondition). The result is validated
        as a whole, so clearing the endpoint of a remote model is InvalidArgument.
        """
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise InvalidArgument(
                f"cannot update {', '.join(unknown)}; updatable: {', '.join(sorted(UPDATABLE))}"
            )
        new_status = changes.get("status")
        if "status" in changes and not isinstance(new_status, ModelStatus):
            raise InvalidArgument("status must be DRAFT or LISTED")
        ref = ModelRef(vendor, name, version)
        _check_ref(ref)
        now = self._clock()
        with Session(self._writer) as session, session.begin():
            row, current = self._locked(session, ref)
            if new_status is ModelStatus.RETIRED and current.status is not ModelStatus.RETIRED:
                raise FailedPrecondition(f"use RetireModel to retire model {current.ref}")
            _refuse_if_retired(current)
            updated = dataclasses.replace(current, **changes, update_time=now)
            validate_model(updated)
            if self._check is not None:
                self._check(updated)
            apply_to_row(row, updated)
            row.update_time = now
            session.add(row)
        return updated

    def retire(self, vendor: str, name: str, version: str) -> ModelVersion:
        """Make a version uncallable, for good; FailedPrecondition if it is already retired.

        The row stays so that audit entries naming the version still resolve.
        """
        ref = ModelRef(vendor, name, version)
        _check_ref(ref)
        now = self._clock()
        with Session(self._writer) as session, session.begin():
            row, current = self._locked(session, ref)
            _refuse_if_retired(current)
            retired = dataclasses.replace(current, status=ModelStatus.RETIRED, update_time=now)
            row.status = ModelStatus.RETIRED.value
            row.update_time = now
            session.add(row)
        return retired

    def _page(
        self,
        stmt: _Select,
        keys: Sequence[Any],
        after: list[str] | None,
        page_size: int,
        scope: str,
    ) -> tuple[list[ModelVersion], str]:
        size = _page_size(page_size)
        if after is not None:
            stmt = stmt.where(sa.tuple_(*keys) > sa.tuple_(*after))
        stmt = stmt.order_by(*keys).limit(size + 1)
        with Session(self._engine) as session:
            rows = session.exec(stmt).all()
        models = [to_domain(*found) for found in rows[:size]]
        if len(rows) <= size:
            return models, ""
        last = models[-1]
        key = [last.vendor, last.name, last.version][-len(keys) :]
        return models, _encode_token(scope, key)

    def _locked(self, session: Session, ref: ModelRef) -> tuple[ModelVersionRow, ModelVersion]:
        found = session.exec(_by_ref(ref).with_for_update(of=ModelVersionRow)).first()
        if found is None:
            raise NotFound(not_found(ref))
        return found[0], to_domain(*found)

    @staticmethod
    def _ensure(
        session: Session,
        table: type[VendorRow] | type[ModelRow],
        key: dict[str, Any],
        now: datetime,
    ) -> int:
        """Insert the row unless it exists (in either case without an error), return its id."""
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(table).values(**key, create_time=now).on_conflict_do_nothing()
        session.execute(stmt)
        query = sa.select(col(table.id))
        for column, value in key.items():
            query = query.where(col(getattr(table, column)) == value)
        row_id: int = session.execute(query).scalar_one()
        return row_id


def _joined() -> _Select:
    return (
        select(ModelVersionRow, VendorRow.name, ModelRow.name)
        .join(ModelRow, col(ModelVersionRow.model_id) == col(ModelRow.id))
        .join(VendorRow, col(ModelRow.vendor_id) == col(VendorRow.id))
    )


def _by_ref(ref: ModelRef) -> _Select:
    stmt = _joined().where(col(VendorRow.name) == ref.vendor, col(ModelRow.name) == ref.name)
    if ref.version is not None:
        stmt = stmt.where(col(ModelVersionRow.version) == ref.version)
    return stmt


def _check_ref(ref: ModelRef) -> None:
    check_vendor(ref.vendor)
    check_name(ref.name)
    if ref.version is not None:
        check_version(ref.version)


def _refuse_if_retired(mv: ModelVersion) -> None:
    if mv.status is ModelStatus.RETIRED:
        raise FailedPrecondition(f"model {mv.ref} is retired; retirement is final")


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _encode_token(scope: str, key: list[str]) -> str:
    raw = json.dumps({"s": scope, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, scope: str, arity: int) -> list[str] | None:
    """The sort key inside ``token``; InvalidArgument if it is malformed or from another list."""
    if not token:
        return None
    bad = InvalidArgument(
        "page_token is not valid for this request: pass the next_page_token of the previous "
        "response unchanged, with the same filter"
    )
    if len(token) > 1024:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise bad from exc
    if not isinstance(data, dict) or data.get("s") != scope:
        raise bad
    key = data.get("k")
    if (
        not isinstance(key, list)
        or len(key) != arity
        or not all(isinstance(part, str) for part in key)
    ):
        raise bad
    return key
