"""Decisions become response messages, cached or not, always saying what the decision says."""

from __future__ import annotations

from broker._proto.broker.v1 import broker_pb2
from broker.enforce.enforcer import EntityDecision, FieldDecision
from broker.server.broker_service import _decisions_to_proto, _on_termination


def _as_tuple(m: broker_pb2.FieldDecision) -> tuple[object, ...]:
    entities = tuple((e.label, e.action, e.count) for e in m.entities)
    return (m.direction, m.path, tuple(m.labels), m.action, entities)


def test_messages_say_what_each_decision_says_on_every_call() -> None:
    decisions = [
        FieldDecision("request", "/a", ("pii",), "redact"),
        FieldDecision("response", "/b", (), "allow", (EntityDecision("pci.card", "mask", 2),)),
        FieldDecision("request", "/" + "k" * 600, ("x",), "drop"),  # too long to cache
    ]
    expected = [
        ("request", "/a", ("pii",), "redact", ()),
        ("response", "/b", (), "allow", (("pci.card", "mask", 2),)),
        ("request", "/" + "k" * 600, ("x",), "drop", ()),
    ]
    for _ in range(3):  # the first call fills the caches, the others read them
        assert [_as_tuple(m) for m in _decisions_to_proto(decisions)] == expected
    # An equal decision that is another object, and a different one, are answered correctly.
    twin = FieldDecision("request", "/a", ("pii",), "redact")
    other = FieldDecision("request", "/a", ("pii",), "hash")
    assert [_as_tuple(m) for m in _decisions_to_proto([twin, other])] == [
        ("request", "/a", ("pii",), "redact", ()),
        ("request", "/a", ("pii",), "hash", ()),
    ]


class _Context:
    """``add_callback`` as grpcio's: refused once the RPC has ended."""

    def __init__(self, *, ended: bool) -> None:
        self.ended = ended
        self.callbacks: list[object] = []

    def add_callback(self, callback: object) -> bool:
        if self.ended:
            return False
        self.callbacks.append(callback)
        return True


def test_the_canceller_runs_when_the_rpc_ends() -> None:
    cancelled: list[bool] = []
    context = _Context(ended=False)
    _on_termination(context, lambda: cancelled.append(True))  # type: ignore[arg-type]
    assert cancelled == []
    assert len(context.callbacks) == 1


def test_a_buyer_already_gone_cancels_the_vendor_call_at_once() -> None:
    cancelled: list[bool] = []
    _on_termination(_Context(ended=True), lambda: cancelled.append(True))  # type: ignore[arg-type]
    assert cancelled == [True]
