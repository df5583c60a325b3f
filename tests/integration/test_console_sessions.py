"""Console sessions across real console processes: shared, surviving a restart, revocable.

Each console is a `broker console` process of its own (as a deployment of several would run),
over one broker and its database. A session opened on one is honoured by another, survives
the first being killed, and ends everywhere when the officer signs out on any of them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.console_harness import World, start_world
from tests.integration.harness import FakeBackend

BROKER_CLI = Path(sys.executable).parent / "broker"


@pytest.fixture
def world(tmp_path: Path, backend: FakeBackend) -> Iterator[World]:
    world = start_world(tmp_path, backend)
    yield world
    world.stop()


class ConsoleProcess:
    """`broker console` on a free loopback port, configured like the world's broker."""

    def __init__(self, world: World) -> None:
        config = world.broker.config
        env = {
            **os.environ,
            "BROKER__DATA_DIR": str(config.data_dir),
            "BROKER__DATABASE__URL": config.database_url,
            "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
            "BROKER__CONSOLE__BROKER_TARGET": world.broker.target,
        }
        self.process = subprocess.Popen(
            [str(BROKER_CLI), "console", "--listen", "127.0.0.1:0"],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(r"compliance console at (http://\S+?)/? ", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise AssertionError("the console process did not start")

    def client(self, cookies: httpx.Cookies | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, cookies=cookies, timeout=30)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def consoles(world: World) -> Iterator[list[ConsoleProcess]]:
    started: list[ConsoleProcess] = []
    yield started
    for console in started:
        if console.process.poll() is None:
            console.kill()


def _sign_in(console: ConsoleProcess, token: str) -> httpx.Cookies:
    with console.client() as client:
        page = client.get("/login")
        nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert nonce is not None
        answer = client.post("/login", data={"token": token, "login_csrf": nonce.group(1)})
        assert answer.status_code == 303, answer.text
        return httpx.Cookies({"console_session": answer.cookies["console_session"]})


def _signed_in(console: ConsoleProcess, cookies: httpx.Cookies) -> bool:
    with console.client(cookies) as client:
        page = client.get("/entries")
    return page.status_code == 200 and "olga @ acme" in page.text


def test_a_session_survives_a_restart_and_ends_everywhere_at_sign_out(
    world: World, consoles: list[ConsoleProcess]
) -> None:
    first, second = ConsoleProcess(world), ConsoleProcess(world)
    consoles.extend([first, second])
    token = world.broker.token("acme", "compliance", subject="olga")
    cookies = _sign_in(first, token)
    assert _signed_in(first, cookies)
    assert _signed_in(second, cookies)  # another console process honours it
    first.kill()
    restarted = ConsoleProcess(world)
    consoles.append(restarted)
    assert _signed_in(restarted, cookies)  # the session outlived the process that made it
    # The database holds neither the cookie's id nor the token.
    engine = sa.create_engine(world.broker.config.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id_hash, sealed_token FROM console_sessions"))
            stored = b"".join(bytes(a) + bytes(b) for a, b in rows)
    finally:
        engine.dispose()
    assert stored
    assert cookies["console_session"].encode() not in stored
    assert token.encode() not in stored
    # Sign out on one console: every console refuses the cookie from then on.
    with second.client(cookies) as client:
        page = client.get("/entries")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        assert client.post("/logout", data={"csrf": csrf.group(1)}).status_code == 303
    assert not _signed_in(second, cookies)
    assert not _signed_in(restarted, cookies)
