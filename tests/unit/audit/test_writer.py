"""AuditLog: group commit, receipts, failing closed, checkpoints within a second."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from broker.audit.checkpoint import open_checkpoint
from broker.audit.entry import FieldAction, parse_entry
from broker.audit.keys import TenantKeys
from broker.audit.note import Signer
from broker.audit.writer import AuditLog, why_not_written
from broker.errors import Unavailable
from tests.unit.audit.conftest import ORIGIN, make_intent


def test_concurrent_appends_are_group_committed(engine: sa.Engine, audit_log: AuditLog) -> None:
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    receipts: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            receipt = audit_log.append(make_intent())
            with lock:
                receipts.append(receipt.leaf_index)

    threads = [threading.Thread(target=work) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(receipts) == list(range(200))
    assert len(commits) < 200  # batches, not one transaction per entry


def test_convenience_methods_link_intent_and_outcome(audit_log: AuditLog, keys: TenantKeys) -> None:
    intent = audit_log.record_call_intent(
        call_id="c-1", tenant="acme", subject="svc", model="v/m@1", vendor="v",
        policy_revision="r7", fields=[FieldAction("/ssn", ("pii.ssn",), "tokenize")],
        request=b'{"ssn":"123-45-6789"}',
    )  # fmt: skip
    outcome = audit_log.record_call_outcome(
        call_id="c-1", tenant="acme", subject="svc", model="v/m@1", vendor="v",
        intent_index=intent.leaf_index, status="OK", latency_us=1500, response=b'{"y":1}',
    )  # fmt: skip
    admin = audit_log.record_admin(
        kind="admin.model.registered", tenant="v", actor="alice", target="v/m@1"
    )
    assert (intent.leaf_index, outcome.leaf_index, admin.leaf_index) == (0, 1, 2)
    assert intent.call_id == outcome.call_id == "c-1"
    with audit_log.store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY leaf_index")).all()
    bodies = [parse_entry(bytes(r[0])) for r in rows]
    assert bodies[0]["request_digest"] == keys.digest("acme", b'{"ssn":"123-45-6789"}')
    assert b"123-45-6789" not in bytes(rows[0][0])
    assert bodies[1]["intent_index"] == 0
    assert bodies[1]["time_us"] > bodies[0]["time_us"]
    assert bodies[2]["kind"] == "admin.model.registered"


def test_a_checkpoint_is_signed_within_a_second_of_growth(
    audit_log: AuditLog, signer: Signer
) -> None:
    audit_log.append(make_intent())
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and audit_log.store.latest_checkpoint() is None:
        time.sleep(0.02)
    latest = audit_log.store.latest_checkpoint()
    assert latest is not None
    checkpoint, _ = open_checkpoint(latest.note, [signer.verifier()], origin=ORIGIN)
    assert checkpoint.size == 1


def test_a_write_failure_fails_every_waiter_closed(
    engine: sa.Engine, signer: Signer, keys: TenantKeys
) -> None:
    log = AuditLog(engine, signer=signer, origin=ORIGIN, tenant_keys=keys, batch_ms=20)
    log.start()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit_nodes"))
        errors: list[Exception] = []

        def work() -> None:
            try:
                log.append(make_intent())
            except Unavailable as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 5
        assert all(e.message.startswith("audit log cannot be written") for e in errors)
    finally:
        log.close()


def test_appending_to_a_log_that_is_not_running_is_unavailable(
    engine: sa.Engine, signer: Signer, keys: TenantKeys
) -> None:
    log = AuditLog(engine, signer=signer, origin=ORIGIN, tenant_keys=keys)
    with pytest.raises(Unavailable):
        log.append(make_intent())
    log.start()
    log.append(make_intent())
    log.close()
    with pytest.raises(Unavailable):
        log.append(make_intent())
    assert log.store.latest_checkpoint() is not None  # close signs the last head


def test_constructor_checks(engine: sa.Engine, keys: TenantKeys) -> None:
    with pytest.raises(ValueError, match="must be the origin"):
        AuditLog(engine, signer=Signer.generate("other"), origin=ORIGIN, tenant_keys=keys)
    with pytest.raises(ValueError, match="batch_max"):
        AuditLog(
            engine, signer=Signer.generate(ORIGIN), origin=ORIGIN, tenant_keys=keys, batch_max=0
        )


def test_an_idle_log_commits_in_the_callers_own_thread(
    audit_log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    committers: list[threading.Thread] = []
    original = audit_log.store.append_in_turn

    def recording(*args: Any, **kwargs: Any) -> Any:
        committers.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(audit_log.store, "append_in_turn", recording)
    for _ in range(3):
        audit_log.append(make_intent())
    assert committers == [threading.current_thread()] * 3


def _wait_until(condition: Any) -> None:
    """Poll ``condition`` (a safety bound keeps a broken writer from hanging the suite)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.001)


def _blocked_leader(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Make the next commit wait for ``release``; ``entered`` is set once it is waiting."""
    entered, release = threading.Event(), threading.Event()
    original = log.store.append_in_turn

    def blocking(*args: Any, **kwargs: Any) -> Any:
        if not release.is_set():
            entered.set()
            release.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(log.store, "append_in_turn", blocking)
    return entered, release


def test_followers_ride_in_one_batch_behind_the_leader(
    audit_log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = _blocked_leader(audit_log, monkeypatch)
    batches: list[int] = []
    blocked = audit_log.store.append_in_turn

    def counting(entries: Any, companions: Any = ()) -> Any:
        batches.append(len(entries))
        return blocked(entries, companions)

    monkeypatch.setattr(audit_log.store, "append_in_turn", counting)
    receipts: list[int] = []
    leader = threading.Thread(
        target=lambda: receipts.append(audit_log.append(make_intent()).leaf_index)
    )
    leader.start()
    assert entered.wait(5)
    followers = [
        threading.Thread(target=lambda: receipts.append(audit_log.append(make_intent()).leaf_index))
        for _ in range(5)
    ]
    for t in followers:
        t.start()
    _wait_until(lambda: len(audit_log._queue) == 5)  # all queued behind the blocked leader
    release.set()
    for t in [leader, *followers]:
        t.join()
    assert sorted(receipts) == list(range(6))
    assert batches == [1, 5]  # the leader's own entry, then every follower at once


def test_a_caller_that_times_out_while_queued_is_withdrawn(
    engine: sa.Engine, signer: Signer, keys: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(engine, signer=signer, origin=ORIGIN, tenant_keys=keys, append_timeout=0.2)
    log.start()
    try:
        entered, release = _blocked_leader(log, monkeypatch)
        leader = threading.Thread(target=lambda: log.append(make_intent(call_id="first")))
        leader.start()
        assert entered.wait(5)
        with pytest.raises(Unavailable, match="timed out"):
            log.append(make_intent(call_id="withdrawn"))
        release.set()
        leader.join()
        log.append(make_intent(call_id="last"))
    finally:
        log.close()
    with engine.connect() as conn:
        calls = conn.execute(sa.text("SELECT call_id FROM audit_entries ORDER BY leaf_index"))
        assert [c for (c,) in calls] == ["first", "last"]


def test_close_waits_for_queued_appends(
    audit_log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = _blocked_leader(audit_log, monkeypatch)
    receipts: list[int] = []
    callers = [
        threading.Thread(target=lambda: receipts.append(audit_log.append(make_intent()).leaf_index))
        for _ in range(3)
    ]
    callers[0].start()
    assert entered.wait(5)
    for t in callers[1:]:
        t.start()
    _wait_until(lambda: len(audit_log._queue) == 2)
    closer = threading.Thread(target=audit_log.close)
    closer.start()
    release.set()
    closer.join()
    for t in callers:
        t.join()
    assert sorted(receipts) == [0, 1, 2]
    with pytest.raises(Unavailable):
        audit_log.append(make_intent())


@pytest.mark.parametrize(
    ("driver_error", "said"),
    [
        ("database or disk is full", "the database's disk is full"),
        ('could not extend file "base/16384/2619": No space left on device', "disk is full"),
        ("attempt to write a readonly database", "the database is read-only"),
        ("connection refused", "the database cannot be reached or refused the write"),
    ],
)
def test_a_failed_commit_tells_the_caller_what_is_wrong_without_the_drivers_text(
    driver_error: str, said: str
) -> None:
    """Regression (the fault battery's full disk): the caller used to read only
    'OperationalError'. The driver's text (which carries SQL parameters) stays out."""
    exc = sa.exc.OperationalError("INSERT INTO audit_entries VALUES (?)", ("p4r4m",), None)
    exc.orig = Exception(driver_error)  # type: ignore[assignment]
    reason = why_not_written(exc)
    assert said in reason
    assert "p4r4m" not in reason and "INSERT" not in reason
    assert why_not_written(ValueError("x")) == "ValueError"
