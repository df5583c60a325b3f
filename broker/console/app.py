"""The console's web application: sign-in, security headers, and the pages.

Security, in the order a request meets it:

1. every answer carries a strict CSP (``default-src 'self'``, no inline script or style, no
   framing), ``nosniff``, ``no-referrer`` and ``no-store`` (pages hold audit data);
2. a session is a random id in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` when served
   over TLS) that names a server-side :class:`~broker.console.sessions.Session` (in the
   database, sealed under a key derived from the id: :mod:`broker.console.stored_sessions`);
   the bearer token stays on the server and is never rendered into a page;
3. sign-in verifies the token with the broker's own issuers (:class:`TokenVerifier`), whether
   pasted (the development issuer) or obtained by an issuer's OIDC authorization-code flow
   (:mod:`broker.console.oidc`: PKCE, state, nonce), and admits only the ``compliance`` and
   ``admin`` roles; every route checks the role again, and the broker checks it a third time
   on each gRPC call made with that token;
4. every POST (sign-in included, through a double-submit cookie) must carry its CSRF token.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from broker.auth.principal import Role
from broker.auth.tokens import TokenVerifier
from broker.console import pages
from broker.console.backend import Backend, BackendError
from broker.console.oidc import OidcSignIn, SignInRefused
from broker.console.sessions import Session, Sessions
from broker.errors import Unauthenticated
from broker.logging import get_logger

_log = get_logger(__name__)
HERE: Final = Path(__file__).resolve().parent
SESSION_COOKIE: Final = "console_session"
LOGIN_COOKIE: Final = "console_login"
#: The pending OIDC sign-in's id. SameSite=Lax, not Strict: the issuer's redirect back is a
#: cross-site top-level GET, on which a Strict cookie would not be sent.
OIDC_COOKIE: Final = "console_oidc"
CALLBACK_PATH: Final = "/login/callback"
CONSOLE_ROLES: Final = (Role.COMPLIANCE, Role.ADMIN)
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SignInRequired(Exception):
    """No live session: the answer is a redirect to the sign-in page."""


class Forbidden(Exception):
    """A signed-in officer without the role a page or action needs."""


class SignInRefusedPage(Exception):
    """A sign-in that did not succeed: the sign-in page again, with this text, as 401."""


class SecurityHeaders:
    """Pure ASGI middleware that adds the headers above to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_HEADERS)
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self._app(scope, receive, send_with_headers)


class Console:
    """What the routes share: the verifier, the sessions, the backend, the templates."""

    def __init__(
        self,
        verifier: TokenVerifier,
        sessions: Sessions,
        backend: Backend,
        *,
        secure_cookies: bool,
        oidc: OidcSignIn | None = None,
        public_url: str | None = None,
        pinned_vkey: str | None = None,
    ) -> None:
        self.verifier = verifier
        self.sessions = sessions
        self.backend = backend
        self.secure_cookies = secure_cookies
        self.oidc = oidc
        self.public_url = public_url.rstrip("/") if public_url else None
        #: The log's verifier key from the console's own config: Verify checks against it,
        #: never against the key the broker serves (None: the served key, flagged as such).
        self.pinned_vkey = pinned_vkey
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.autoescape = True

    def session(self, request: Request, *, admin: bool = False) -> Session:
        """The caller's live session with a console role (``admin`` too if asked), or raise."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired
        if not session.principal.has_role(*CONSOLE_ROLES):
            raise Forbidden("the console needs the compliance or admin role")
        if admin and not session.principal.has_role(Role.ADMIN):
            raise Forbidden("this action needs the admin role")
        return session

    async def checked_form(self, request: Request, session: Session) -> dict[str, str]:
        """The POSTed form, after its CSRF token matched the session's (else Forbidden)."""
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not session.csrf_ok(values.get("csrf")):
            _log.warning("console_csrf_refused", subject=session.principal.subject)
            raise Forbidden("the form's CSRF token is missing or wrong; reload the page")
        return values

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        """A page, with the session (if any) for the header and the CSRF token for forms."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        base = {"session": session, "principal": session.principal if session else None}
        return self.templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status
        )

    def cookie(
        self,
        response: Response,
        name: str,
        value: str,
        max_age: int,
        *,
        samesite: Literal["strict", "lax"] = "strict",
    ) -> None:
        """Set a console cookie: HttpOnly, SameSite=Strict, Secure when served over TLS."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite=samesite,
            secure=self.secure_cookies,
        )

    def login_context(self, error: str = "") -> dict[str, Any]:
        """What the sign-in page shows: the paste form's nonce, the OIDC buttons, an error."""
        providers = self.oidc.providers if self.oidc else []
        return {
            "login_csrf": secrets.token_urlsafe(32),
            "providers": [(i, p.name) for i, p in enumerate(providers)],
            "error": error,
        }


def _login_page(console: Console) -> Callable[[Request], Response]:
    def login_page(request: Request) -> Response:
        context = console.login_context()
        response = console.render(request, "login.html", context)
        console.cookie(response, LOGIN_COOKIE, context["login_csrf"], 600)
        return response

    return login_page


def _login(console: Console) -> Callable[[Request], Awaitable[Response]]:
    async def login(request: Request) -> Response:
        form = await request.form()
        nonce = request.cookies.get(LOGIN_COOKIE)
        presented = form.get("login_csrf")
        if (
            not nonce
            or not isinstance(presented, str)
            or not secrets.compare_digest(nonce, presented)
        ):
            raise Forbidden("the sign-in form expired or did not come from this console; reload it")
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        try:
            principal = console.verifier.verify(token)
        except Unauthenticated as exc:
            _log.info("console_sign_in_refused", reason=exc.log_reason or exc.message)
            return _refused(console, request, "The token was not accepted.")
        if not principal.has_role(*CONSOLE_ROLES):
            _log.info("console_sign_in_refused", reason="role", subject=principal.subject)
            return _refused(console, request, "The console is for the compliance and admin roles.")
        session = console.sessions.create(token, principal)
        _log.info("console_signed_in", tenant=principal.tenant, subject=principal.subject)
        response = RedirectResponse("/entries", status_code=303)
        console.cookie(response, SESSION_COOKIE, session.session_id, _max_age(session, console))
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    return login


def _oidc_begin(console: Console) -> Callable[[Request], Response]:
    """Start an issuer's authorization-code flow: remember it, send the browser there."""

    def oidc_begin(request: Request) -> Response:
        provider = request.path_params["provider"]
        if console.oidc is None or not isinstance(provider, int):
            raise SignInRefusedPage("this console has no such sign-in provider")
        base = console.public_url or str(request.base_url).rstrip("/")
        try:
            login_id, url = console.oidc.begin(provider, base + CALLBACK_PATH)
        except SignInRefused as exc:
            _log.warning("console_oidc_unavailable", reason=exc.reason)
            raise SignInRefusedPage("the issuer cannot be reached; try again later") from exc
        response = RedirectResponse(url, status_code=303)
        console.cookie(response, OIDC_COOKIE, login_id, 600, samesite="lax")
        return response

    return oidc_begin


def _oidc_callback(console: Console) -> Callable[[Request], Response]:
    """The issuer's answer: check it, swap the code, verify both tokens, open a session."""

    def oidc_callback(request: Request) -> Response:
        if console.oidc is None:
            raise SignInRefusedPage("this console has no OIDC sign-in")
        params = {k: v for k, v in request.query_params.items() if len(v) <= 4096}
        try:
            token, principal = console.oidc.finish(request.cookies.get(OIDC_COOKIE), params)
        except SignInRefused as exc:
            _log.info("console_sign_in_refused", reason=exc.reason, flow="oidc")
            raise SignInRefusedPage("Sign-in with the issuer failed; start again.") from exc
        if not principal.has_role(*CONSOLE_ROLES):
            _log.info("console_sign_in_refused", reason="role", subject=principal.subject)
            raise SignInRefusedPage("The console is for the compliance and admin roles.")
        session = console.sessions.create(token, principal)
        _log.info(
            "console_signed_in", tenant=principal.tenant, subject=principal.subject, flow="oidc"
        )
        # A page, not a redirect: the browser arrived here from the issuer's site, and a
        # same-site navigation from this page is what sends the SameSite=Strict session cookie.
        response = console.render(request, "signed_in.html", {"signed_in": principal})
        console.cookie(response, SESSION_COOKIE, session.session_id, _max_age(session, console))
        response.delete_cookie(OIDC_COOKIE, path="/")
        return response

    return oidc_callback


def _max_age(session: Session, console: Console) -> int:
    return max(1, int(session.expires_at - console.sessions.clock()))


def _refused(console: Console, request: Request, message: str) -> Response:
    context = console.login_context(message)
    response = console.render(request, "login.html", context, status=401)
    console.cookie(response, LOGIN_COOKIE, context["login_csrf"], 600)
    return response


def _logout(console: Console) -> Callable[[Request], Awaitable[Response]]:
    async def logout(request: Request) -> Response:
        session = console.session(request)
        await console.checked_form(request, session)
        console.sessions.delete(session.session_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return logout


def build_app(console: Console) -> Starlette:
    """The ASGI application over one :class:`Console`."""

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def forbidden(request: Request, exc: Exception) -> Response:
        return console.render(request, "error.html", {"status": 403, "message": str(exc)}, 403)

    async def backend_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BackendError)
        if exc.status == 401:  # the broker no longer accepts the token: the session is over
            console.sessions.delete(request.cookies.get(SESSION_COOKIE))
            return await sign_in_required(request, exc)
        message = f"{exc.code}: {exc.message}"
        return console.render(
            request, "error.html", {"status": exc.status, "message": message}, exc.status
        )

    async def sign_in_refused(request: Request, exc: Exception) -> Response:
        response = _refused(console, request, str(exc))
        response.delete_cookie(OIDC_COOKIE, path="/")
        return response

    routes = [
        Route("/login", _login_page(console), methods=["GET"]),
        Route("/login/oidc/{provider:int}", _oidc_begin(console), methods=["GET"]),
        Route(CALLBACK_PATH, _oidc_callback(console), methods=["GET"]),
        Route("/login", _login(console), methods=["POST"]),
        Route("/logout", _logout(console), methods=["POST"]),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            SignInRequired: sign_in_required,
            Forbidden: forbidden,
            SignInRefusedPage: sign_in_refused,
            BackendError: backend_error,
        },
    )
    mounted: pages.Console = console  # the pages read it back as their Protocol; mypy checks it
    app.state.console = mounted
    app.add_middleware(SecurityHeaders)
    return app
