"""Console sign-in by the OIDC authorization-code flow, against a real OpenID Provider.

The provider is panva's certified ``oidc-provider`` (tests/oidc), signing with a key the
broker's ``auth.issuers`` trusts through a JWKS file. The walk is done over HTTP here (each
step visible, so each attack can be tried at its step) and in Chromium at the end.
Attacks tried, each must end with no session: a wrong ``state``, a replayed answer and a
replayed code, an ID token for another nonce, a token from an issuer the broker does not
trust, and an account without the compliance or admin role.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import grpc
import httpx
import pytest
from structlog.testing import capture_logs

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc
from broker.auth.tokens import TokenVerifier
from broker.config import ConfigError, IssuerConfig, OidcSignInConfig
from broker.console.oidc import OidcSignIn
from broker.console.serve import ConsoleServer
from tests.conftest import skip_or_fail
from tests.integration.console_harness import World, start_world
from tests.integration.harness import FakeBackend
from tests.integration.oidc_provider import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    OidcProvider,
    start_provider,
)

ACCOUNTS = {
    "ada": {"tenant": "ops", "roles": ["admin"]},
    "carl": {"tenant": "acme", "roles": ["compliance"]},
    "bob": {"tenant": "acme", "roles": ["buyer"]},
}
SECRET_ENV = "CONSOLE_OIDC_SECRET"
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Setup:
    world: World
    provider: OidcProvider
    rogue: OidcProvider
    console: ConsoleServer

    @property
    def url(self) -> str:
        return self.console.url.rstrip("/")


@pytest.fixture
def setup(tmp_path: Path, backend: FakeBackend) -> Iterator[Setup]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    callback = f"http://127.0.0.1:{sock.getsockname()[1]}/login/callback"
    provider = start_provider(tmp_path / "oidc", redirect_uris=[callback], accounts=ACCOUNTS)
    rogue = start_provider(tmp_path / "rogue", redirect_uris=[callback], accounts=ACCOUNTS)
    world = start_world(
        tmp_path, backend, BROKER__AUTH__ISSUERS=json.dumps([provider.issuer_config()])
    )
    oidc = [
        OidcSignInConfig(
            issuer=provider.issuer,
            client_id=CLIENT_ID,
            client_secret_env=SECRET_ENV,
            scopes=["openid", "audit"],
            name="Test IdP",
        )
    ]
    console = world.serve(sock=sock, oidc=oidc, environ={SECRET_ENV: CLIENT_SECRET})
    yield Setup(world, provider, rogue, console)
    world.stop()
    provider.stop()
    rogue.stop()


def _client() -> httpx.Client:
    """One browser: one cookie jar for the console and the provider (both on 127.0.0.1)."""
    return httpx.Client(timeout=30, follow_redirects=False)


def _start(client: httpx.Client, setup: Setup) -> str:
    """Ask the console to start a sign-in; the provider URL it sends the browser to."""
    started = client.get(f"{setup.url}/login/oidc/0")
    assert started.status_code == 303
    assert "console_oidc" in started.cookies
    return started.headers["location"]


def _through_provider(client: httpx.Client, url: str, login: str, console_url: str) -> str:
    """Walk the provider's pages as a person would (log in as ``login``); the callback URL."""
    for _ in range(12):
        if url.startswith(console_url):
            return url
        answer = client.get(url)
        if answer.is_redirect:
            url = urljoin(url, answer.headers["location"])
            continue
        assert answer.status_code == 200, answer.text[:500]
        action = re.search(r'<form[^>]*action="([^"]+)"', answer.text)
        assert action is not None, answer.text[:500]
        posted = client.post(
            urljoin(url, action.group(1)),
            data={"prompt": "login", "login": login, "password": "any"},
        )
        assert posted.is_redirect, posted.text[:500]
        url = urljoin(url, posted.headers["location"])
    raise AssertionError("the provider never sent the browser back")


def _refusal(logs: list[dict[str, Any]]) -> str:
    """The reason the console logged for the one refused sign-in in ``logs``."""
    reasons = [e["reason"] for e in logs if e["event"] == "console_sign_in_refused"]
    assert len(reasons) == 1, reasons
    return str(reasons[0])


def _signed_in(client: httpx.Client, setup: Setup) -> bool:
    page = client.get(f"{setup.url}/entries")
    return page.status_code == 200


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_an_officer_signs_in_with_the_issuer_and_sees_only_their_tenant(setup: Setup) -> None:
    with _client() as client:
        authorize = _start(client, setup)
        asked = parse_qs(urlsplit(authorize).query)
        assert asked["code_challenge_method"] == ["S256"]
        assert len(asked["code_challenge"][0]) == 43  # base64url SHA-256
        assert len(asked["state"][0]) >= 43 and len(asked["nonce"][0]) >= 43
        assert asked["state"] != asked["nonce"]
        assert asked["resource"] == [AUDIENCE]
        callback = _through_provider(client, authorize, "carl", setup.url)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        with capture_logs() as logs:
            landed = client.get(callback)
        assert any(e["event"] == "console_signed_in" for e in logs)
        assert code not in repr(logs)  # neither the code nor anything of the tokens is logged
        assert landed.status_code == 200
        assert "carl @ acme" in landed.text
        assert "console_session" in landed.cookies
        page = client.get(f"{setup.url}/entries")
        assert page.status_code == 200
        assert "carl @ acme" in page.text
        # The broker scopes the officer to acme: bank's entries are not listed, acme's are.
        assert "<td>acme-svc</td>" in page.text
        assert "bank-svc" not in page.text
        # The answer replayed (same URL, same browser) finds no pending sign-in.
        client.cookies.delete("console_session")
        assert client.get(callback).status_code == 401
        assert not _signed_in(client, setup)


def test_the_token_from_the_flow_is_one_the_broker_api_accepts(setup: Setup) -> None:
    configs = [
        OidcSignInConfig(
            issuer=setup.provider.issuer,
            client_id=CLIENT_ID,
            client_secret_env=SECRET_ENV,
            scopes=["openid", "audit"],
        )
    ]
    config = setup.world.broker.config
    verifier = TokenVerifier(config.auth, data_dir=config.key_dir)
    sign_in = OidcSignIn(configs, verifier, environ={SECRET_ENV: CLIENT_SECRET})
    try:
        with _client() as client:
            login_id, authorize = sign_in.begin(0, f"{setup.url}/login/callback")
            callback = _through_provider(client, authorize, "ada", setup.url)
        params = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        token, principal = sign_in.finish(login_id, params)
    finally:
        sign_in.close()
    assert (principal.tenant, principal.subject) == ("ops", "ada")
    with setup.world.broker.channel() as channel:
        checkpoint = audit_pb2_grpc.AuditStub(channel).GetCheckpoint(
            audit_pb2.GetCheckpointRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert checkpoint.checkpoint


def test_a_wrong_state_is_refused_and_ends_the_attempt(setup: Setup) -> None:
    with _client() as client:
        callback = _through_provider(client, _start(client, setup), "carl", setup.url)
        forged = _with_query(callback, state="x" * 43)
        with capture_logs() as logs:
            refused = client.get(forged)
        assert refused.status_code == 401
        assert "state does not match" in _refusal(logs)
        assert "Sign-in with the issuer failed" in refused.text
        assert not _signed_in(client, setup)
        # The attempt is over: the genuine answer, arriving after, is refused too.
        assert client.get(callback).status_code == 401
        assert not _signed_in(client, setup)


def test_a_replayed_code_is_refused(setup: Setup) -> None:
    with _client() as client:
        first = _through_provider(client, _start(client, setup), "carl", setup.url)
        assert client.get(first).status_code == 200
        client.cookies.delete("console_session")
        # A new sign-in (its own state, nonce and verifier), answered with the old code.
        second = _through_provider(client, _start(client, setup), "carl", setup.url)
        old_code = parse_qs(urlsplit(first).query)["code"][0]
        replayed = _with_query(second, code=old_code)
        with capture_logs() as logs:
            assert client.get(replayed).status_code == 401
        assert "invalid_grant" in _refusal(logs)  # the provider itself refused the old code
        assert not _signed_in(client, setup)


def test_an_id_token_for_another_nonce_is_refused(setup: Setup) -> None:
    with _client() as client:
        authorize = _start(client, setup)
        # The code injected comes from an authorization made with another nonce.
        other = _with_query(authorize, nonce="n" * 43)
        callback = _through_provider(client, other, "carl", setup.url)
        with capture_logs() as logs:
            assert client.get(callback).status_code == 401
        assert "nonce does not match" in _refusal(logs)
        assert not _signed_in(client, setup)


def test_an_account_without_a_console_role_is_refused(setup: Setup) -> None:
    with _client() as client:
        callback = _through_provider(client, _start(client, setup), "bob", setup.url)
        refused = client.get(callback)
        assert refused.status_code == 401
        assert "compliance and admin roles" in refused.text
        assert not _signed_in(client, setup)


def test_a_token_from_an_issuer_the_broker_does_not_trust_is_refused(setup: Setup) -> None:
    # A real token, from a real provider, that no one configured: the console will not offer
    # sign-in with it...
    rogue = OidcSignInConfig(issuer=setup.rogue.issuer, client_id=CLIENT_ID)
    config = setup.world.broker.config
    verifier = TokenVerifier(config.auth, data_dir=config.key_dir)
    with pytest.raises(ConfigError, match=r"not one of auth\.issuers"):
        OidcSignIn([rogue], verifier)
    token = _rogue_access_token(setup)
    # ...the paste form refuses it...
    with httpx.Client(base_url=setup.url, timeout=30, follow_redirects=True) as client:
        page = client.get("/login")
        nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert nonce is not None
        with capture_logs() as logs:
            refused = client.post("/login", data={"login_csrf": nonce.group(1), "token": token})
        assert refused.status_code == 401
        assert "unknown issuer" in _refusal(logs)
        assert client.get("/entries").url.path == "/login"
    # ...and so does the broker's gRPC API.
    with setup.world.broker.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        audit_pb2_grpc.AuditStub(channel).GetCheckpoint(
            audit_pb2.GetCheckpointRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def _rogue_access_token(setup: Setup) -> str:
    """An access token the untrusted provider issues by the same flow, with its own client."""
    # A verifier that trusts the rogue provider (as the rogue's own relying party would).
    config = setup.world.broker.config
    rogue = IssuerConfig.model_validate(setup.rogue.issuer_config())
    verifier = TokenVerifier(
        config.auth.model_copy(update={"issuers": [rogue]}), data_dir=config.key_dir
    )
    configs = [
        OidcSignInConfig(
            issuer=setup.rogue.issuer,
            client_id=CLIENT_ID,
            client_secret_env=SECRET_ENV,
            scopes=["openid", "audit"],
        )
    ]
    sign_in = OidcSignIn(configs, verifier, environ={SECRET_ENV: CLIENT_SECRET})
    try:
        with _client() as client:
            login_id, authorize = sign_in.begin(0, f"{setup.url}/login/callback")
            callback = _through_provider(client, authorize, "ada", setup.url)
        params = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        token, _ = sign_in.finish(login_id, params)
    finally:
        sign_in.close()
    return token


def test_a_sign_in_started_on_one_console_finishes_on_another(
    tmp_path: Path, backend: FakeBackend
) -> None:
    # Two console processes share the database, behind one public address (as behind a
    # load balancer): the issuer's answer may reach the one that did not start the sign-in.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    public = f"http://127.0.0.1:{sock.getsockname()[1]}"
    provider = start_provider(
        tmp_path / "oidc", redirect_uris=[f"{public}/login/callback"], accounts=ACCOUNTS
    )
    world = start_world(
        tmp_path, backend, BROKER__AUTH__ISSUERS=json.dumps([provider.issuer_config()])
    )
    try:
        oidc = [
            OidcSignInConfig(
                issuer=provider.issuer,
                client_id=CLIENT_ID,
                client_secret_env=SECRET_ENV,
                scopes=["openid", "audit"],
            )
        ]
        kwargs: dict[str, Any] = {
            "oidc": oidc,
            "environ": {SECRET_ENV: CLIENT_SECRET},
            "stored": True,
        }
        first = world.serve(sock=sock, **kwargs)
        other = world.serve(**kwargs).url.rstrip("/")
        with _client() as client:
            started = client.get(f"{public}/login/oidc/0")
            login_cookie = started.cookies["console_oidc"]
            callback = _through_provider(client, started.headers["location"], "carl", public)
            landed = client.get(other + callback.removeprefix(public))
            assert landed.status_code == 200
            assert "carl @ acme" in landed.text
            # The session works on both, and the answer cannot be used a second time.
            assert client.get(f"{other}/entries").status_code == 200
            assert client.get(f"{public}/entries").status_code == 200
            client.cookies.delete("console_session")
            client.cookies.set("console_oidc", login_cookie)  # even with the login's cookie
            assert (
                client.get(first.url.rstrip("/") + callback.removeprefix(public)).status_code == 401
            )
    finally:
        world.stop()
        provider.stop()


def test_an_officer_signs_in_with_the_issuer_in_a_real_browser(setup: Setup) -> None:
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}: run `make system-deps` (Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = setup.world.broker.config.data_dir / "console-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), chromium_sandbox=False)
        page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
        page.set_default_timeout(20_000)
        try:
            page.goto(f"{setup.url}/entries")
            assert page.url.endswith("/login")
            assert "Sign in with Test IdP" in page.inner_text("#oidc-0")
            page.screenshot(path=str(shots / "00-sign-in-oidc.png"), full_page=True)
            page.click("#oidc-0")
            page.wait_for_url(re.compile(re.escape(setup.provider.issuer)))
            page.fill("input[name=login]", "carl")
            page.fill("input[name=password]", "any")
            page.click("button[type=submit]")
            page.wait_for_url(f"{setup.url}/entries")
            assert "carl @ acme" in page.inner_text("#who")
            page.screenshot(path=str(shots / "00-signed-in-oidc.png"), full_page=True)
            # Sign out ends the session: the entries page asks to sign in again.
            page.click("text=Sign out")
            page.wait_for_url(f"{setup.url}/login")
            page.goto(f"{setup.url}/entries")
            assert page.url.endswith("/login")
        finally:
            browser.close()
