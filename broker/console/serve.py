"""Run the console: build it from the broker's config and serve it with uvicorn.

Plain HTTP is refused on anything but a loopback address: the session cookie could not be
``Secure`` and would cross the network in clear. Over TLS (``console.tls_cert_file``) the cookie
is ``Secure`` and any address may be used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from dataclasses import dataclass

import sqlalchemy as sa
import uvicorn

from broker.audit.merkle import VerificationError
from broker.audit.note import Verifier
from broker.auth.tokens import TokenVerifier
from broker.config import Config, ConfigError, ConsoleConfig
from broker.console.app import Console, build_app
from broker.console.backend import Backend
from broker.console.oidc import OidcSignIn
from broker.console.stored_logins import StoredPendingLogins
from broker.console.stored_sessions import StoredSessionStore
from broker.storage.db import create_engine_for, migrate


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"console listen address {listen!r} is not host:port")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ConsoleServer:
    """A bound console: ``url`` is where to point a browser; ``serve`` blocks, ``start`` not."""

    server: uvicorn.Server
    sock: socket.socket
    url: str
    backend: Backend
    oidc: OidcSignIn | None = None
    engine: sa.Engine | None = None
    thread: threading.Thread | None = None

    def serve(self) -> None:
        """Serve on this thread until stopped (Ctrl-C / SIGTERM when on the main thread)."""
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> None:
        """Serve on a daemon thread (signals stay with the caller)."""
        self.thread = threading.Thread(target=self.serve, name="console", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ask uvicorn to finish, wait for the thread, close the gRPC channel."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.backend.close()
        if self.oidc is not None:
            self.oidc.close()
        if self.engine is not None:
            self.engine.dispose()


def _pinned_vkey(vkey: str | None) -> str | None:
    """The configured log key, checked to be a well-formed verifier key (else ConfigError)."""
    if vkey is None:
        return None
    try:
        Verifier.from_vkey(vkey)
    except VerificationError as exc:
        raise ConfigError(f"console.log_vkey is not a verifier key: {exc}") from exc
    return vkey


def build_console_server(
    config: Config, *, listen: str | None = None, broker_target: str | None = None
) -> ConsoleServer:
    """Bind the console's socket and build its app from ``config`` (port 0 picks a free one)."""
    address = listen or config.console.listen or "127.0.0.1:8080"
    host, port = _split(address)
    tls = config.console.tls_cert_file is not None
    if not tls and not _is_loopback(host):
        raise ConfigError(
            f"the console serves plain HTTP only on a loopback address, not {host!r}: "
            "set console.tls_cert_file and console.tls_key_file"
        )
    target = broker_target or config.console.broker_target or config.server.listen
    verifier = TokenVerifier(config.auth, data_dir=config.key_dir)
    # Sessions and started OIDC sign-ins live in the broker's database (console_sessions,
    # console_oidc_logins), so they survive a restart and every console process shares them.
    engine = create_engine_for(config.database_url)
    if config.database.auto_migrate:
        migrate(engine)
    oidc = (
        OidcSignIn(config.console.oidc, verifier, pending=StoredPendingLogins(engine))
        if config.console.oidc
        else None
    )
    backend = Backend.connect(target)
    console = Console(
        verifier,
        StoredSessionStore(engine, verifier, config.console.session_minutes * 60),
        backend,
        secure_cookies=tls,
        oidc=oidc,
        public_url=config.console.public_url,
        pinned_vkey=_pinned_vkey(config.console.log_vkey),
    )
    server = bind_console(console, host, port, tls=config.console if tls else None)
    server.engine = engine
    return server


def bind_console(
    console: Console,
    host: str,
    port: int,
    *,
    tls: ConsoleConfig | None = None,
    sock: socket.socket | None = None,
) -> ConsoleServer:
    """Bind a socket for ``console`` (port 0 picks a free one); ``tls`` names its files.

    ``sock``: an already bound socket to serve on instead (a test that must know the console's
    URL before the console exists, e.g. to register it as an OIDC redirect URI).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if sock is None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    uv_config = uvicorn.Config(
        build_app(console),
        log_level="warning",
        access_log=False,
        ssl_certfile=str(tls.tls_cert_file) if tls else None,
        ssl_keyfile=str(tls.tls_key_file) if tls else None,
    )
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"{'https' if tls else 'http'}://{shown}:{bound}/"
    return ConsoleServer(uvicorn.Server(uv_config), sock, url, console.backend, console.oidc)
