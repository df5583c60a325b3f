"""A private PostgreSQL server for tests that stop or restart their database.

The machine's shared server (127.0.0.1:5432) serves other tests and other people, so a test that
takes its database away mid-load runs its own: ``initdb`` into a fresh directory, a free TCP port
on 127.0.0.1, the unix socket in that directory, trust authentication, started and stopped with
``pg_ctl -w``. PostgreSQL refuses to run as root, so as root every command runs as the
``postgres`` OS user (``runuser -u postgres --``) and the directory is made theirs; as any other
user it runs as that user. ``fsync`` is off: the tests stop the server cleanly (``-m fast``
checkpoints), so durability across a power cut is not what they measure, and a loaded CI
machine initialises and restarts much faster without it.

``private_postgres()`` is a context manager that yields a running ``PrivatePostgres`` and always
stops it and removes its directory; ``missing_private_postgres()`` says why one cannot run here
(for ``skip_or_fail``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from broker.demo.child import free_port

BIN_DIR = Path(os.environ.get("BROKER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
_TIMEOUT_S = 120


def missing_private_postgres() -> str | None:
    """Why a private server cannot run on this machine, or None when it can."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN_DIR / tool).exists():
            return f"PostgreSQL server binaries are missing ({BIN_DIR / tool}; BROKER_TEST_PG_BIN)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root, and runuser (util-linux) is missing to drop to postgres"
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root, and there is no {OS_USER!r} OS user to run PostgreSQL as"
    return None


@dataclass
class PrivatePostgres:
    """One server: its directory (data, socket, log) and its port."""

    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` on this server (user postgres, no password)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its URL."""
        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=300"
        )
        self._pg_ctl("start", "-l", str(self.log_file), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, checkpoint, exit); return once down."""
        self._pg_ctl("stop", "-m", mode)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every client connection is cut; return once it is up."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_file))

    def running(self) -> bool:
        """Whether ``pg_ctl status`` finds the server running."""
        return self._run(self._bin("pg_ctl"), "status", "-D", str(self.data_dir)).returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _pg_ctl(self, action: str, *args: str) -> None:
        done = self._run(self._bin("pg_ctl"), action, "-w", "-D", str(self.data_dir), *args)
        if done.returncode != 0:
            raise RuntimeError(
                f"pg_ctl {action} failed ({done.returncode}): {done.stdout}\n{self.log_tail()}"
            )

    def _bin(self, tool: str) -> str:
        return str(BIN_DIR / tool)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the server's OS user; its output is in ``stdout``.

        Output goes through a file, not a pipe: the server that ``pg_ctl start`` forks inherits
        the tool's descriptors, and a pipe it holds would never reach end-of-file.
        """
        prefix = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.root,
                timeout=_TIMEOUT_S,
                check=False,
            )
            out.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read(), "")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private server, stopped and deleted on exit (call ``missing_private_postgres``
    first to skip cleanly where it cannot run).

    The directory is made under the system temporary directory, not pytest's ``tmp_path``: the
    ``postgres`` user must be able to reach it, and pytest's base directory is private to root.
    """
    root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        server = PrivatePostgres(root, free_port())
        init = server._run(
            server._bin("initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stdout}")
        server.start()
        try:
            yield server
        finally:
            if server.running():
                server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
