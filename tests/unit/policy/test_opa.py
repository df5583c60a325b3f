"""OpaEngine against small HTTP servers that speak OPA's Data API.

These are not an OPA server (no OPA binary is available here); they implement the part of the
Data API the broker uses: ``POST /v1/data/<path>`` with ``{"input": ...}`` answers
``{"result": ...}``, or ``{}`` when the document is undefined, and 4xx/5xx with
``{"code", "message"}`` on errors. One evaluates with regorus; the other with OPA's own Go
engine (the ``opa-embedded`` bindings), so the Data API path is also checked against OPA's
evaluation, though not against OPA's HTTP server.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from broker.policy.bundle import load_bundle
from broker.policy.contract import Action, PolicyError
from broker.policy.engine import OpaEngine, build_regorus_engine, regorus_error_text
from broker.policy.opa_embedded import (
    Opa,
    OpaCallError,
    OpaEmbeddedEngine,
    OpaUndefinedDocument,
    build_opa,
)
from tests.unit.policy.conftest import SHIPPED_BUNDLE, make_input
from tests.unit.policy.test_opa_differential import SEED, generate_input, outcome

# regorus engines may only live on the thread that made them: the server's one serving thread.
_SERVER_THREAD = threading.local()


class _FakeOpa(BaseHTTPRequestHandler):
    """Evaluates ``data.<path>`` over the shipped bundle, like OPA's Data API."""

    forced_status: int | None = None
    forced_body: bytes | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: tests assert on results, not on access logs."""

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.forced_status is not None:
            self._send(self.forced_status, self.forced_body or b"{}")
            return
        if not self.path.startswith("/v1/data/"):
            self._send(404, b'{"code": "not_found"}')
            return
        rule = "data." + self.path.removeprefix("/v1/data/").split("?")[0].replace("/", ".")
        engine = getattr(_SERVER_THREAD, "engine", None)
        if engine is None:
            engine = build_regorus_engine(load_bundle(SHIPPED_BUNDLE))
            _SERVER_THREAD.engine = engine
        try:
            engine.set_input_json(json.dumps(request.get("input")))
            result = engine.eval_rule(rule)
        except RuntimeError as exc:
            message = regorus_error_text(exc)[0]
            if message.startswith("not a valid rule path"):  # OPA: undefined document
                self._send(200, b"{}")
                return
            body = {"code": "internal_error", "message": message}
            self._send(500, json.dumps(body).encode())
            return
        self._send(200, json.dumps({} if result is None else {"result": result}).encode())


@pytest.fixture
def opa_port() -> Iterator[int]:
    _FakeOpa.forced_status = None
    _FakeOpa.forced_body = None
    server = HTTPServer(("127.0.0.1", 0), _FakeOpa)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_decides_through_the_data_api(opa_port: int) -> None:
    engine = OpaEngine(port=opa_port, revision="opa-bundle-7")
    try:
        plan = engine.decide(make_input())
        assert plan.allow
        assert plan.revision == "opa-bundle-7"
        assert plan.fields["/payment/card"] == Action("mask", keep_last=4, char="*")
        assert plan.fields["/customer/email"] == Action("tokenize")
        denied = engine.decide(make_input(purpose="marketing"))
        assert not denied.allow
    finally:
        engine.close()


def test_undefined_document_denies(opa_port: int) -> None:
    engine = OpaEngine(port=opa_port, rule="data.broker.no_such_rule")
    with pytest.raises(PolicyError, match="undefined"):
        engine.decide(make_input())
    engine.close()


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (500, b'{"code": "internal_error", "message": "eval_conflict_error"}', "HTTP 500"),
        (400, b'{"code": "invalid_parameter"}', "HTTP 400"),
        (200, b"not json", "garbage"),
        (200, b"[1, 2]", "undefined"),
        (200, b'{"result": "allow"}', "must be an object"),
        (200, b'{"result": {"allow": true, "fields": {"/x": {"action": "allow"}}}}', "not in"),
    ],
)
def test_server_failures_deny(opa_port: int, status: int, body: bytes, fragment: str) -> None:
    _FakeOpa.forced_status = status
    _FakeOpa.forced_body = body
    engine = OpaEngine(port=opa_port)
    with pytest.raises(PolicyError) as info:
        engine.decide(make_input())
    assert fragment in info.value.reason
    engine.close()


def test_unreachable_server_denies() -> None:
    server = HTTPServer(("127.0.0.1", 0), _FakeOpa)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    engine = OpaEngine(port=port, timeout_s=0.5)
    with pytest.raises(PolicyError, match="unreachable"):
        engine.decide(make_input())
    engine.close()


def test_bad_rule_name_is_refused() -> None:
    with pytest.raises(PolicyError):
        OpaEngine(rule="broker")


class _GoOpaDataApi(BaseHTTPRequestHandler):
    """The Data API evaluated by OPA's own Go engine over the shipped bundle."""

    opa: Opa | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: tests assert on results, not on access logs."""

    def _send(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        path = self.path.removeprefix("/v1/data/").split("?")[0].replace("/", ".")
        assert self.opa is not None
        try:
            value, _ = self.opa.document(path, request.get("input"))
        except OpaUndefinedDocument:
            self._send(200, {})
        except OpaCallError as exc:
            self._send(500, {"code": "internal_error", "message": exc.message})
        else:
            self._send(200, {"result": value})


@pytest.fixture
def go_opa_port(opa_bindings_present: None) -> Iterator[int]:
    _GoOpaDataApi.opa = build_opa(load_bundle(SHIPPED_BUNDLE))
    server = HTTPServer(("127.0.0.1", 0), _GoOpaDataApi)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        _GoOpaDataApi.opa.close()


def test_data_api_backed_by_opa_matches_the_embedded_engine(go_opa_port: int) -> None:
    """Over HTTP (JSON both ways) the plans are those of OPA's engine in process, input by input."""
    remote = OpaEngine(port=go_opa_port, revision=load_bundle(SHIPPED_BUNDLE).revision)
    local = OpaEmbeddedEngine(load_bundle(SHIPPED_BUNDLE), max_engines=1)
    rng = random.Random(SEED + 3)
    try:
        for _ in range(300):
            item = generate_input(rng)
            assert outcome(remote, item) == outcome(local, item), item.to_json_obj()
        missing = OpaEngine(port=go_opa_port, rule="data.broker.no_such_rule")
        with pytest.raises(PolicyError, match="undefined"):
            missing.decide(make_input())
        missing.close()
    finally:
        remote.close()
        local.close()
