"""A real broker with a small audit trail, and the console in front of it.

The trail: acme (whose policy keeps requests 7 days and answers 30) makes two calls, bank one,
each with a field labelled ``pii.email`` and one without a label; globex makes one call its
policy denies. So there are intent and outcome
entries of two tenants, per-field decisions, and retained records to hold.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.auth.tokens import TokenVerifier
from broker.config import OidcSignInConfig
from broker.console.app import Console
from broker.console.backend import Backend
from broker.console.oidc import OidcSignIn, PendingStore
from broker.console.serve import ConsoleServer, bind_console
from broker.console.sessions import Sessions, SessionStore
from broker.console.stored_logins import StoredPendingLogins
from broker.console.stored_sessions import StoredSessionStore
from broker.retention.rootkey import generate_root_key_file
from tests.integration.harness import BrokerHarness, FakeBackend, fields_echo_model, start_broker

MODEL = "acme-models/fields-echo@1.0.0"


@dataclass
class World:
    """The broker, the calls it served, and a way to build consoles in front of it."""

    broker: BrokerHarness
    acme_calls: list[str]
    bank_calls: list[str]
    retained: list[str]
    servers: list[ConsoleServer] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)
    engines: list[sa.Engine] = field(default_factory=list)

    def console(
        self,
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = 1800,
        oidc: list[OidcSignInConfig] | None = None,
        environ: dict[str, str] | None = None,
        stored: bool = False,
        pinned_vkey: str | None = None,
    ) -> Console:
        """A console over this broker (its sessions on ``clock``; ``oidc``: sign-in issuers).

        ``stored``: sessions and started sign-ins in the broker's database, as ``broker
        console`` keeps them (else in this console's memory).
        """
        verifier = TokenVerifier(self.broker.config.auth, data_dir=self.broker.config.key_dir)
        sessions: Sessions = SessionStore(ttl, clock=clock)
        pending: PendingStore | None = None
        if stored:
            engine = sa.create_engine(self.broker.config.database_url)
            self.engines.append(engine)
            sessions = StoredSessionStore(engine, verifier, ttl, clock=clock)
            pending = StoredPendingLogins(engine, clock=clock)
        sign_in = (
            OidcSignIn(oidc, verifier, environ=environ or {}, pending=pending) if oidc else None
        )
        return Console(
            verifier,
            sessions,
            Backend.connect(self.broker.target),
            secure_cookies=False,
            oidc=sign_in,
            pinned_vkey=pinned_vkey,
        )

    def serve(self, *, sock: socket.socket | None = None, **kwargs: Any) -> ConsoleServer:
        """A new console, served by uvicorn on a free loopback port (stopped at teardown).

        ``sock``: a socket already bound, when the test must know the URL beforehand.
        """
        server = bind_console(self.console(**kwargs), "127.0.0.1", 0, sock=sock)
        server.start()
        self.servers.append(server)
        return server

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client (with its own cookie jar) of a new console."""
        url = self.serve(**kwargs).url.rstrip("/")
        client = httpx.Client(base_url=url, timeout=30, follow_redirects=True)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        """Stop the consoles, then the broker."""
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.stop()
        for engine in self.engines:
            engine.dispose()
        self.broker.stop()

    def leaf_of(self, call_id: str, kind: str) -> int:
        """Leaf index of a call's entry, once the log has it under a checkpoint."""
        engine = sa.create_engine(self.broker.config.database_url)
        query = sa.text(
            "SELECT e.leaf_index FROM audit_entries e WHERE e.call_id = :c AND e.kind = :k "
            "AND e.leaf_index < (SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints)"
        )
        try:
            for _ in range(200):
                with engine.connect() as conn:
                    row = conn.execute(query, {"c": call_id, "k": kind}).first()
                if row is not None:
                    return int(row[0])
                time.sleep(0.05)
        finally:
            engine.dispose()
        raise AssertionError(f"no checkpointed {kind} entry for call {call_id}")


def start_world(tmp_path: Path, backend: FakeBackend, **env: str) -> World:
    """Start the broker (SQLite, retention on) and make the calls of the module doc.

    ``env``: more ``BROKER__...`` settings (e.g. ``auth.issuers`` for an OIDC provider).
    """
    root_key = tmp_path / "secrets" / "root.key"
    root_key.parent.mkdir()
    generate_root_key_file(root_key)
    broker = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'var' / 'broker.db'}",
        BROKER__RETENTION__ROOT_KEY_FILE=str(root_key),
        **env,
    )
    model = fields_echo_model(
        backend.target,
        {"email": "/customer/email", "note": "/note"},
        {"/customer/email": ("pii.email",)},
    )
    broker.client("acme-models", "vendor").register_model(model)
    acme_calls, retained = [], []
    for payload in (
        b'{"customer": {"email": "a@example.com"}, "note": "x"}',
        b'{"customer": {"email": "b@example.com"}, "note": "y"}',
    ):
        reply = invoke(broker, "acme", payload)
        acme_calls.append(reply.call_id)
        retained.extend(reply.retained_record_ids)
    bank_calls = [
        invoke(broker, "bank", b'{"customer": {"email": "c@example.com"}, "note": "z"}').call_id
    ]
    # globex's policy allows only some purposes: a marketing call is denied (and audited).
    with pytest.raises(grpc.RpcError) as denied:
        invoke(broker, "globex", b'{"customer": {"email": "d@x.org"}, "note": "w"}', "marketing")
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    _wait_for_checkpoint(broker, outcomes=4)
    return World(broker, acme_calls, bank_calls, retained)


def _wait_for_checkpoint(broker: BrokerHarness, *, outcomes: int) -> None:
    """Wait until the log holds ``outcomes`` outcome entries, all under a signed checkpoint."""
    engine = sa.create_engine(broker.config.database_url)
    query = sa.text(
        "SELECT COUNT(*) FROM audit_entries WHERE kind = 'call.outcome' "
        "AND leaf_index < (SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints)"
    )
    try:
        for _ in range(200):
            with engine.connect() as conn:
                if conn.execute(query).scalar_one() >= outcomes:
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"the log never held {outcomes} checkpointed outcomes")


def invoke(
    broker: BrokerHarness, tenant: str, payload: bytes, purpose: str = ""
) -> broker_pb2.InvokeResponse:
    with broker.channel() as channel:
        reply: broker_pb2.InvokeResponse = broker_pb2_grpc.BrokerStub(channel).Invoke(
            broker_pb2.InvokeRequest(model=MODEL, json=payload, purpose=purpose),
            metadata=(("authorization", f"Bearer {broker.token(tenant, 'buyer')}"),),
            timeout=10,
        )
    return reply
