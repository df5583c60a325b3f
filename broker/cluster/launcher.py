"""Start, watch and stop the processes of a demo cluster; the state file ``down`` reads.

Layout under the cluster's root (``var/cluster`` by default)::

    keys/                 the replicas' shared keys_dir (tenant keys, digest key, log signer,
                          dev issuer): tokens, digests and checkpoints are the same everywhere
    pki/                  the cluster CA, the replicas' and the balancer's certificates (tls.py)
    retention-root.key    the retention root key every replica unwraps records with
    replica-N/            replica N's data_dir, its broker.toml and broker.log
    haproxy.cfg           the balancer's configuration; haproxy.log its output
    state.json            every process started: name, pid, start time, log; rewritten after
                          each start, so `broker cluster down` stops what a crashed `up` left

Each process runs in a session of its own (``start_new_session``) and outlives ``broker
cluster up``; ``down`` signals each whole process group, SIGTERM then SIGKILL. A pid is only
signalled while its kernel start time still matches the one recorded, so a pid reused by an
unrelated process after a reboot is never signalled.

Replicas start one by one: the first migrates the database, then the others start together.
A replica is ready when it answers the gRPC health check SERVING over mutual TLS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.cluster import balancer
from broker.cluster.settings import (  # noqa: F401 - re-exported for callers
    DEFAULT_ROOT,
    READY_TIMEOUT_S,
    STOP_GRACE_S,
    ClusterError,
    ClusterSettings,
    replica_name,
)
from broker.cluster.tls import ClusterPki, ensure_pki
from broker.demo.child import free_port

# -- processes and the state file ------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if it is gone or a
    zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass
class Child:
    """A process the cluster started (``popen`` only in the process that started it)."""

    name: str
    pid: int
    started: int
    log: Path
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return start_time(self.pid) == self.started

    def signal(self, sig: signal.Signals) -> None:
        """Signal the process group, only if the pid is still the process started."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process itself (not its group), as a crash would; reap it."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (within ``timeout``); a child of this process is
        also reaped then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=0.1)
            if not self.alive():
                self._reap()
                return True
            time.sleep(0.05)
        if self.alive():
            return False
        self._reap()
        return True

    def _reap(self) -> None:
        """Collect the exit status of a process that has exited. ``alive`` can find it a zombie
        in /proc just after ``poll`` saw it running; unreaped, it would stay a zombie (and
        ``Popen`` warns when it is collected)."""
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds."""
        self.signal(signal.SIGTERM)
        if not self.wait(grace):
            self.signal(signal.SIGKILL)
            self.wait(10)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "started": self.started,
            "log": str(self.log),
            "port": self.port,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Child:
        return cls(
            str(data["name"]),
            int(data["pid"]),
            int(data["started"]),
            Path(data["log"]),
            int(data.get("port", 0)),
        )


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv`` in a session of its own, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(  # noqa: S603 - argv built by this module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    started = start_time(popen.pid)
    if started is None:  # exited at once: report it with its log
        popen.wait()
        raise ClusterError(f"{name} exited at once (status {popen.returncode}); see {log}")
    return Child(name, popen.pid, started, log, popen=popen)


def read_state(settings: ClusterSettings) -> dict[str, Any]:
    """The state file's content; empty when no cluster was started."""
    try:
        data: dict[str, Any] = orjson.loads(settings.state_file.read_bytes())
    except FileNotFoundError:
        return {}
    except orjson.JSONDecodeError as exc:
        raise ClusterError(
            f"{settings.state_file} is not readable JSON ({exc}); stop the processes by hand"
        ) from exc
    return data


# -- replica configuration --------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return orjson.dumps(str(value)).decode()  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(table: Mapping[str, Any], prefix: str = "") -> str:
    """Nested mappings of plain values as TOML (only what replica configs need)."""
    lines = [f"{key} = {_toml_value(v)}" for key, v in table.items() if not isinstance(v, Mapping)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in table.items():
        if isinstance(value, Mapping):
            name = f"{prefix}.{key}" if prefix else key
            body = to_toml(value, name)
            if any(not isinstance(v, Mapping) for v in value.values()):
                text += f"\n[{name}]\n"
            text += body
    return text


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


def replica_config(
    settings: ClusterSettings, pki: ClusterPki, index: int, port: int
) -> dict[str, Any]:
    """Replica ``index``'s configuration (written to its broker.toml)."""
    pair = pki.replica(index)
    config: dict[str, Any] = {
        "data_dir": settings.replica_dir(index).absolute(),
        "keys_dir": settings.keys_dir.absolute(),
        "server": {
            "listen": f"127.0.0.1:{port}",
            "workers": settings.workers,
            "tls": {
                "cert_file": pair.cert.absolute(),
                "key_file": pair.key.absolute(),
                "client_ca_file": pki.ca_cert.absolute(),
            },
        },
        "database": {"url": settings.database_url},
        "policy": {"bundle_dir": settings.policy_dir.absolute()},
        "auth": {"dev_issuer": {"enabled": True}},
        "retention": {"root_key_file": settings.retention_key.absolute()},
    }
    return _merge(config, settings.overrides)


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` if it does not exist (ClusterError if the
    server cannot be reached)."""
    target = sa.make_url(url)
    if not target.drivername.startswith("postgresql"):
        raise ClusterError(f"a cluster needs PostgreSQL, not {target.drivername}")
    admin = sa.create_engine(
        target.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            ).first()
            if exists is None:
                quoted = str(target.database).replace('"', '""')
                conn.execute(sa.text(f'CREATE DATABASE "{quoted}"'))
    except sa.exc.OperationalError as exc:
        host = f"{target.host}:{target.port or 5432}"
        raise ClusterError(
            f"PostgreSQL at {host} is not reachable ({type(exc.orig).__name__}); "
            "start it, or pass --database-url"
        ) from None
    finally:
        admin.dispose()


def replica_health(pki: ClusterPki, index: int, port: int, timeout: float = 2.0) -> str:
    """Replica ``index``'s gRPC health (``SERVING``, ``NOT_SERVING``...), or ``UNREACHABLE``."""
    pair = pki.balancer
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", replica_name(index))]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# -- the cluster --------------------------------------------------------------------------------


class Cluster:
    """The replicas and the balancer of one cluster root (see the module docstring)."""

    def __init__(
        self, settings: ClusterSettings, *, say: Callable[[str], None] = lambda _: None
    ) -> None:
        self.settings = settings
        self.say = say
        self.children: dict[str, Child] = {}
        self.extra_state: dict[str, Any] = {}
        self.pki = ClusterPki(settings.pki_dir)

    # state

    def save(self) -> None:
        data = {
            "front": self.settings.front,
            "database_url": sa.make_url(self.settings.database_url).render_as_string(
                hide_password=True
            ),
            "processes": [c.to_json() for c in self.children.values()],
            **self.extra_state,
        }
        tmp = self.settings.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        tmp.replace(self.settings.state_file)

    def adopt(self, child: Child) -> None:
        self.children[child.name] = child
        self.save()

    # starting

    def start(self) -> None:
        """PKI, database, replicas, then the balancer; raises ClusterError (after stopping
        what it started) if any part does not come up."""
        settings = self.settings
        balancer.haproxy_binary()  # before anything starts: say how to install it
        if any(Child.from_json(c).alive() for c in read_state(settings).get("processes", [])):
            raise ClusterError(
                f"a cluster from {settings.root} is running: `broker cluster down` first"
            )
        settings.root.mkdir(parents=True, exist_ok=True)
        try:
            ensure_database(settings.database_url)
            self.pki = ensure_pki(settings.pki_dir, settings.replicas)
            self._ensure_retention_key()
            ports = self._replica_ports()
            self.start_replica(1, ports[0])
            for index, port in enumerate(ports[1:], start=2):
                self.start_replica(index, port, wait=False)
            for index, port in enumerate(ports[1:], start=2):
                self.wait_replica(index, port)
            self.start_balancer()
        except BaseException:
            self.stop()
            raise

    def _ensure_retention_key(self) -> None:
        if not self.settings.retention_key.exists():
            from broker.retention.rootkey import generate_root_key_file  # noqa: PLC0415

            generate_root_key_file(self.settings.retention_key)

    def _replica_ports(self) -> list[int]:
        base = self.settings.replica_port
        return [base + i if base else free_port() for i in range(self.settings.replicas)]

    def replica_config_file(self, index: int) -> Path:
        return self.settings.replica_dir(index) / "broker.toml"

    def start_replica(self, index: int, port: int, *, wait: bool = True) -> Child:
        """Write replica ``index``'s config and start it (wait until it is SERVING)."""
        directory = self.settings.replica_dir(index)
        directory.mkdir(parents=True, exist_ok=True)
        config_file = self.replica_config_file(index)
        header = "# Rendered by `broker cluster up` (broker/cluster/launcher.py); edits are lost.\n"
        config_file.write_text(
            header + to_toml(replica_config(self.settings, self.pki, index, port))
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER__")}
        argv = [
            sys.executable,
            "-m",
            "broker.cli.main",
            "serve",
            "--config",
            str(config_file.absolute()),
        ]
        child = spawn(replica_name(index), argv, directory / "broker.log", env=env)
        child.port = port
        self.adopt(child)
        self.say(f"started {child.name} (pid {child.pid}) on 127.0.0.1:{port}")
        if wait:
            self.wait_replica(index, port)
        return child

    def wait_replica(self, index: int, port: int, timeout: float = READY_TIMEOUT_S) -> None:
        child = self.children[replica_name(index)]
        deadline = time.monotonic() + timeout
        while replica_health(self.pki, index, port) != "SERVING":
            if not child.alive():
                raise ClusterError(f"{child.name} exited before it served; see {child.log}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{child.name} did not report SERVING within {timeout:.0f} s; see {child.log}"
                )
            time.sleep(0.2)

    def restart_replica(self, index: int) -> Child:
        """Start replica ``index`` again on its port (after it died or was stopped)."""
        old = self.children[replica_name(index)]
        old.wait(10)
        return self.start_replica(index, old.port)

    def replica(self, index: int) -> Child:
        return self.children[replica_name(index)]

    @property
    def config_file(self) -> Path:
        return self.settings.root / "haproxy.cfg"

    def write_balancer_config(self) -> Path:
        backends = [
            balancer.Backend(index, "127.0.0.1", self.replica(index).port)
            for index in range(1, self.settings.replicas + 1)
        ]
        text = balancer.render_config(
            front=self.settings.front,
            backends=backends,
            pki=self.pki,
            stats_socket=self.settings.stats_socket.absolute(),
            check_interval_ms=self.settings.check_interval_ms,
        )
        self.config_file.write_text(text)
        balancer.check_config(self.config_file)
        return self.config_file

    def start_balancer(self, timeout: float = 30.0) -> Child:
        """Render and check haproxy.cfg, start HAProxy in the foreground (``-db``) as a child,
        return once every replica is UP in it."""
        config = self.write_balancer_config()
        argv = [balancer.haproxy_binary(), "-db", "-f", str(config.absolute())]
        child = spawn("haproxy", argv, self.settings.root / "haproxy.log")
        self.adopt(child)
        self.say(f"started haproxy (pid {child.pid}) on {self.settings.front}")
        names = {replica_name(i) for i in range(1, self.settings.replicas + 1)}
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                states = balancer.server_states(self.settings.stats_socket)
                if all(states.get(name) == "UP" for name in names):
                    return child
            if not child.alive():
                raise ClusterError(f"haproxy exited; see {child.log}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"haproxy did not see every replica UP within {timeout:.0f} s; see {child.log}"
                )
            time.sleep(0.2)

    def balancer_states(self) -> dict[str, str]:
        try:
            return balancer.server_states(self.settings.stats_socket)
        except OSError:
            return {}

    # stopping

    def stop(self) -> None:
        """Stop every process this object or the state file knows, the balancer first."""
        known = {
            c["name"]: Child.from_json(c) for c in read_state(self.settings).get("processes", [])
        }
        known.update(self.children)
        order = sorted(
            known.values(), key=lambda c: (c.name != "haproxy", c.name.startswith("replica"))
        )
        for child in order:
            if child.alive():
                self.say(f"stopping {child.name} (pid {child.pid})")
            child.stop()
        self.children.clear()
        with contextlib.suppress(FileNotFoundError):
            self.settings.state_file.unlink()

    def status(self) -> list[tuple[str, int, str]]:
        """(name, pid, health) of every process in the state file."""
        rows = []
        states = self.balancer_states()
        for data in read_state(self.settings).get("processes", []):
            child = Child.from_json(data)
            if not child.alive():
                health = "EXITED"
            elif child.name.startswith("replica-"):
                index = int(child.name.rsplit("-", 1)[1])
                health = replica_health(self.pki, index, child.port)
                health += f", balancer: {states.get(child.name, 'unknown')}"
            else:
                health = "RUNNING"
            rows.append((child.name, child.pid, health))
        return rows
