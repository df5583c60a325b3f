"""Sign-in with an issuer's OpenID Connect authorization-code flow (PKCE, state and nonce).

The flow, and what each step defends against:

1. :meth:`OidcSignIn.begin` makes a fresh ``state`` (binds the answer to this browser: login
   CSRF), ``nonce`` (binds the ID token to this sign-in: token injection and replay) and PKCE
   ``code_verifier`` (S256; a stolen code is useless without it), keeps them server-side as a
   :class:`PendingLogin` under a random id (the browser holds only that id, in a short-lived
   cookie), and redirects to the issuer's authorization endpoint;
2. the issuer sends the browser back with ``code`` and ``state``; the pending login is *taken*
   (removed) before anything else, so a replayed answer finds nothing, and ``state`` must match;
3. :meth:`OidcSignIn.finish` swaps the code at the token endpoint (with the verifier and, for
   a confidential client, its secret) for an ID token and an access token;
4. the ID token is verified with the issuer's *configured* keys (``auth.issuers``: nothing is
   fetched to decide trust), for this ``client_id``, with this ``nonce``;
5. the access token is verified exactly as the broker's gRPC API verifies it, and must name
   the same subject: the console then calls the broker with it, as with a pasted token.

Discovery (``/.well-known/openid-configuration``) is read on first use; its ``issuer`` must be
the configured one (OpenID Connect Discovery 1.0 section 4.3, the mix-up defence). Every
failure is :class:`SignInRefused` with a reason for the log; no token, code or secret is ever
part of a reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from broker.auth.principal import Principal
from broker.auth.tokens import TokenVerifier
from broker.config import ConfigError, OidcSignInConfig
from broker.errors import Unauthenticated

PENDING_SECONDS: Final = 600
MAX_PENDING: Final = 10_000
_MAX_ANSWER_BYTES: Final = 64 * 1024
_TIMEOUT: Final = 10.0


class SignInRefused(Exception):
    """The flow failed; ``reason`` is for the log (never a token, code or secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """What one started sign-in must find again when the issuer sends the browser back."""

    provider: int
    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    started_at: float


class PendingStore(Protocol):
    """Where started sign-ins wait for the issuer's answer (memory, or the database)."""

    def put(self, pending: PendingLogin) -> str: ...

    def take(self, login_id: str | None) -> PendingLogin | None: ...


class PendingLogins:
    """Started sign-ins in memory by a random id: bounded, expiring, each taken only once.

    For one console process (and tests); ``broker console`` keeps them in the database
    (:mod:`broker.console.stored_logins`), so any of its processes can finish a sign-in.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, PendingLogin] = OrderedDict()

    def put(self, pending: PendingLogin) -> str:
        """Keep ``pending``; the id to put in the browser's cookie."""
        login_id = secrets.token_urlsafe(32)
        with self._lock:
            self._pending[login_id] = pending
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return login_id

    def take(self, login_id: str | None) -> PendingLogin | None:
        """The pending login (removed, so a second answer finds nothing), if still fresh."""
        if not login_id:
            return None
        with self._lock:
            pending = self._pending.pop(login_id, None)
        if pending is None or pending.started_at + PENDING_SECONDS <= self._clock():
            return None
        return pending


def _https_or_loopback(url: str) -> bool:
    """True for an https URL, or an http one on a loopback host (OIDC Discovery wants https)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _secret(config: OidcSignInConfig, environ: Mapping[str, str]) -> str | None:
    if config.client_secret_file is not None:
        try:
            return config.client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"console.oidc {config.issuer!r}: client_secret_file cannot be read "
                f"({exc.strerror})"
            ) from exc
    if config.client_secret_env is not None:
        value = environ.get(config.client_secret_env)
        if not value:
            raise ConfigError(
                f"console.oidc {config.issuer!r}: environment variable "
                f"{config.client_secret_env} is not set"
            )
        return value
    return None


class OidcProvider:
    """One configured issuer: its discovery document (read once) and the client's credentials."""

    def __init__(
        self,
        config: OidcSignInConfig,
        verifier: TokenVerifier,
        http: httpx.Client,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not verifier.trusts(config.issuer):
            raise ConfigError(
                f"console.oidc issuer {config.issuer!r} is not one of auth.issuers: the broker "
                "would refuse the tokens it issues"
            )
        if not _https_or_loopback(config.issuer):
            raise ConfigError(
                f"console.oidc issuer {config.issuer!r} must be an https URL (http only on a "
                "loopback address, for development)"
            )
        self.config = config
        self.name = config.name or config.issuer
        self.resource = config.resource or verifier.audience_of(config.issuer)
        self._secret = _secret(config, os.environ if environ is None else environ)
        self._http = http
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document, fetched on first use and checked."""
        with self._lock:
            if self._metadata is None:
                self._metadata = self._discover()
            return self._metadata

    def _discover(self) -> dict[str, Any]:
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json("GET", url)
        if document.get("issuer") != self.config.issuer:
            raise SignInRefused("discovery document names another issuer")
        for name in ("authorization_endpoint", "token_endpoint"):
            if not isinstance(document.get(name), str):
                raise SignInRefused(f"discovery document has no {name}")
        methods = document.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            raise SignInRefused("the issuer does not offer PKCE with S256")
        return document

    def _get_json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, url, timeout=_TIMEOUT, **kwargs)
        except httpx.HTTPError as exc:
            raise SignInRefused(f"issuer unreachable ({type(exc).__name__})") from exc
        if len(response.content) > _MAX_ANSWER_BYTES:
            raise SignInRefused("issuer answer too large")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise SignInRefused(f"issuer answered HTTP {response.status_code} without JSON")
        if response.status_code != 200:
            error = body.get("error")
            shown = error[:64] if isinstance(error, str) else "?"
            raise SignInRefused(f"issuer refused: HTTP {response.status_code} {shown!r}")
        return body

    def authorization_url(self, pending: PendingLogin) -> str:
        """Where to send the browser to start ``pending``."""
        challenge = _b64url(hashlib.sha256(pending.code_verifier.encode("ascii")).digest())
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": pending.redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.resource,
        }
        endpoint = str(self.metadata()["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    def exchange(self, pending: PendingLogin, code: str) -> dict[str, Any]:
        """The token endpoint's answer for ``code`` (with the PKCE verifier)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.code_verifier,
            "resource": self.resource,
        }
        auth = None
        if self._secret is None:
            form["client_id"] = self.config.client_id
        else:
            auth = httpx.BasicAuth(self.config.client_id, self._secret)
        return self._get_json("POST", str(self.metadata()["token_endpoint"]), data=form, auth=auth)


class OidcSignIn:
    """The console's OIDC sign-in: providers by index, the pending logins, the verifier."""

    def __init__(
        self,
        configs: list[OidcSignInConfig],
        verifier: TokenVerifier,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        pending: PendingStore | None = None,
    ) -> None:
        self._http = httpx.Client(follow_redirects=False)
        self.providers = [OidcProvider(c, verifier, self._http, environ) for c in configs]
        self.pending: PendingStore = pending or PendingLogins(clock=clock)
        self._verifier = verifier
        self._clock = clock

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def begin(self, provider: int, redirect_uri: str) -> tuple[str, str]:
        """(the id for the browser's cookie, the issuer URL to redirect the browser to)."""
        if not 0 <= provider < len(self.providers):
            raise SignInRefused("no such sign-in provider")
        pending = PendingLogin(
            provider=provider,
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),
            redirect_uri=redirect_uri,
            started_at=self._clock(),
        )
        url = self.providers[provider].authorization_url(pending)
        return self.pending.put(pending), url

    def finish(self, login_id: str | None, params: Mapping[str, str]) -> tuple[str, Principal]:
        """The access token and its principal for the issuer's answer ``params``, or refused."""
        pending = self.pending.take(login_id)
        if pending is None:
            raise SignInRefused("no pending sign-in for this browser (expired or already used)")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise SignInRefused("state does not match the sign-in this browser started")
        if "error" in params:
            raise SignInRefused(f"issuer answered error {params['error'][:64]!r}")
        code = params.get("code", "")
        if not code:
            raise SignInRefused("the issuer's answer has no code")
        provider = self.providers[pending.provider]
        answer = provider.exchange(pending, code)
        id_token, access_token = answer.get("id_token"), answer.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise SignInRefused("the token endpoint gave no ID token or no access token")
        if str(answer.get("token_type", "")).lower() != "bearer":
            raise SignInRefused("the access token is not a Bearer token")
        try:
            claims = self._verifier.verify_id_token(
                id_token, client_id=provider.config.client_id, nonce=pending.nonce
            )
            principal = self._verifier.verify(access_token)
        except Unauthenticated as exc:
            raise SignInRefused(exc.log_reason or exc.message) from exc
        if claims["iss"] != provider.config.issuer or principal.issuer != provider.config.issuer:
            raise SignInRefused("the tokens come from another issuer than the one asked")
        if principal.subject != claims["sub"]:
            raise SignInRefused("the access token and the ID token name different subjects")
        return access_token, principal
