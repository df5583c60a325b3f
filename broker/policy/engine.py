"""Policy decision points: the embedded regorus engine, and an OPA server over its Data API.

Both implement :class:`PolicyEngine` and both fail closed: whatever goes wrong (evaluation
error, undefined rule, unreachable server, malformed answer) becomes :class:`PolicyError`.

Threads and regorus. A ``regorus.Engine`` is a pyo3 *unsendable* object: using it, cloning it
or even dropping it on any thread other than the one that created it panics or leaks. A lock
around one shared engine is therefore not an option, and neither is ``clone()`` from a worker.
Two designs work:

* per-thread engines: each thread parses the bundle once into its own engine (kept in a
  thread-local, dropped on that same thread when the thread ends or when it next evaluates and
  finds the engine's revision retired);
* one owner thread that evaluates every request handed to it through a queue.

Measured on this (shared, 2-CPU) machine with the shipped bundle and a 20-field input, two
threads deciding 1,000 times each, six rounds: per-thread engines 610-830 µs per decision
(median ~640), owner thread 620-850 µs (median ~700). regorus holds the GIL while it
evaluates, so neither design runs two evaluations at once; the owner thread adds two thread
hand-offs per decision. Per-thread engines are faster and need no queue, so this module uses
them; their cost is one parse of the bundle (~1.5 ms) per thread per revision.
"""

from __future__ import annotations

import re
import threading
import weakref
from itertools import count
from typing import Any, Protocol, runtime_checkable

import orjson
import regorus
import requests
from opa_client import OpaClient

from broker.policy.bundle import Bundle
from broker.policy.contract import Plan, PolicyError, PolicyInput, PolicyLoadError, parse_plan

DEFAULT_RULE = "data.broker.decision"

_LOCATION = re.compile(r"-->\s*(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+)")
_MESSAGE = re.compile(r"^error:\s*(?P<msg>.+)$", re.MULTILINE)


@runtime_checkable
class PolicyEngine(Protocol):
    """A loaded policy that turns a :class:`PolicyInput` into a checked :class:`Plan`."""

    @property
    def revision(self) -> str:
        """The policy revision that goes into plans, cache keys and audit entries."""
        ...

    def decide(self, policy_input: PolicyInput) -> Plan:
        """Evaluate the policy; raise :class:`PolicyError` on any failure."""
        ...


def regorus_error_text(exc: BaseException) -> tuple[str, str | None, int | None]:
    """(message, file, line) from a regorus error, without its Rust stack backtrace."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    location = _LOCATION.search(text)
    message = _MESSAGE.search(text)
    msg = message.group("msg").strip() if message else (text.splitlines() or ["unknown"])[0]
    if location is None:
        return msg, None, None
    return msg, location.group("file").strip(), int(location.group("line"))


def _reraise_fatal(exc: BaseException) -> None:
    # regorus reports Rust panics as pyo3's PanicException, a BaseException: those must become
    # a denial too, but a Ctrl-C or interpreter exit must not.
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


def _load_error(engine: Any, bundle: Bundle, include_tests: bool) -> PolicyLoadError | None:
    """Fill ``engine``; return (never raise) the first error, so no traceback keeps it alive."""
    sources = bundle.policies + (bundle.tests if include_tests else ())
    for path, text in sources:
        try:
            engine.add_policy(path, text)
        except BaseException as exc:  # noqa: BLE001 - every failure is a load error (see above)
            _reraise_fatal(exc)
            msg, file, line = regorus_error_text(exc)
            return PolicyLoadError(msg, file=file or path, line=line)
    try:
        engine.add_data_json(orjson.dumps(bundle.data).decode())
    except BaseException as exc:  # noqa: BLE001 - as above
        _reraise_fatal(exc)
        return PolicyLoadError(f"data rejected: {regorus_error_text(exc)[0]}")
    return None


def build_regorus_engine(bundle: Bundle, *, include_tests: bool = False) -> Any:
    """A fresh ``regorus.Engine`` with the bundle's policies and data, owned by this thread.

    A syntax error raises :class:`PolicyLoadError` naming the file and line regorus reports.
    Errors are raised only after the engine is released, because an exception's traceback
    would otherwise keep it alive until a garbage collection on some other thread.
    """
    engine = regorus.Engine()
    error = _load_error(engine, bundle, include_tests)
    if error is not None:
        del engine
        raise error
    return engine


# Per-thread engines, keyed by the generation of the RegorusEngine that owns them. The
# thread-local lives at module level so that it is never destroyed from another thread.
_THREAD = threading.local()
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()
_GENERATIONS = count(1)


def _retire(generation: int) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(generation)


def _thread_engines() -> dict[int, Any]:
    engines: dict[int, Any] | None = getattr(_THREAD, "engines", None)
    if engines is None:
        engines = {}
        _THREAD.engines = engines
    return engines


class RegorusEngine:
    """The embedded engine: evaluates ``rule`` over a loaded :class:`Bundle` in process.

    Construction parses the whole bundle once (so a syntax error surfaces at load time, not at
    the first call) and checks that the rule's package exists.
    """

    def __init__(self, bundle: Bundle, *, rule: str = DEFAULT_RULE) -> None:
        if not rule.startswith("data.") or "." not in rule[5:]:
            raise PolicyLoadError(f"rule must look like data.<package>.<rule>, got {rule!r}")
        self._bundle = bundle
        self._rule = rule
        probe = build_regorus_engine(bundle)
        try:
            packages = set(probe.get_packages())
        finally:
            del probe  # dropped here, on the thread that built it
        package = rule.rsplit(".", 1)[0]
        if package not in packages:
            raise PolicyLoadError(f"no policy defines package {package[5:]} (for {rule})")
        self._generation = next(_GENERATIONS)
        with _LIVE_LOCK:
            _LIVE.add(self._generation)
        weakref.finalize(self, _retire, self._generation)

    @property
    def revision(self) -> str:
        """The bundle revision (see :func:`broker.policy.bundle.bundle_revision`)."""
        return self._bundle.revision

    @property
    def rule(self) -> str:
        """The rule evaluated for each decision."""
        return self._rule

    def _engine(self) -> Any:
        engines = _thread_engines()
        engine = engines.get(self._generation)
        if engine is None:
            with _LIVE_LOCK:
                stale = [g for g in engines if g not in _LIVE]
            for generation in stale:  # dropped here, on the thread that built them
                del engines[generation]
            engine = build_regorus_engine(self._bundle)
            engines[self._generation] = engine
        return engine

    def evaluate(self, policy_input: PolicyInput) -> object:
        """The raw output of the rule (``None`` when undefined); for ``broker policy eval``."""
        engine = self._engine()
        try:
            engine.set_input_json(orjson.dumps(policy_input.to_json_obj()).decode())
            return engine.eval_rule(self._rule)
        except BaseException as exc:  # noqa: BLE001 - any failure denies (fail closed)
            _reraise_fatal(exc)
            msg, file, line = regorus_error_text(exc)
        # Raised outside the except block: as __context__, the regorus error's traceback would
        # hold this frame, and with it the engine, past the end of the call.
        del engine
        where = f" at {file}:{line}" if file else ""
        raise PolicyError(f"evaluation error{where}: {msg}")

    def decide(self, policy_input: PolicyInput) -> Plan:
        """Evaluate and parse strictly; an undefined rule denies."""
        raw = self.evaluate(policy_input)
        if raw is None:
            raise PolicyError(f"{self._rule} is undefined for this input")
        return parse_plan(raw, policy_input, self.revision)


class OpaEngine:
    """A remote OPA server queried through its Data API (``POST /v1/data/<path>``).

    The broker cannot see OPA's bundle, so ``revision`` is what the operator configures (for
    example the bundle revision OPA was deployed with); plans cached under it must be cleared
    (``PolicyStore.reload``) when OPA's policy changes. One HTTP session per thread, because
    ``requests.Session`` is not documented as thread-safe.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8181,
        rule: str = DEFAULT_RULE,
        revision: str = "opa",
        timeout_s: float = 2.0,
        retries: int = 0,
        token: str | None = None,
        ssl: bool = False,
    ) -> None:
        if not rule.startswith("data.") or "." not in rule[5:]:
            raise PolicyLoadError(f"rule must look like data.<package>.<rule>, got {rule!r}")
        self._package, self._rule_name = rule[5:].rsplit(".", 1)
        self._rule = rule
        self._revision = revision
        self._options: dict[str, Any] = {
            "host": host,
            "port": port,
            "timeout": timeout_s,
            "retries": retries,
            "token": token,
            "ssl": ssl,
        }
        self._local = threading.local()
        self._clients: list[OpaClient] = []
        self._lock = threading.Lock()

    @property
    def revision(self) -> str:
        """The operator-declared revision of the policy OPA serves."""
        return self._revision

    def _client(self) -> OpaClient:
        client: OpaClient | None = getattr(self._local, "client", None)
        if client is None:
            client = OpaClient(**self._options)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def decide(self, policy_input: PolicyInput) -> Plan:
        """Query OPA; HTTP errors, timeouts, bad JSON and an undefined result all deny."""
        try:
            answer = self._client().query_rule(
                policy_input.to_json_obj(), self._package, self._rule_name
            )
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise PolicyError(f"OPA answered HTTP {status}", log_reason=str(exc)[:500]) from None
        except (requests.RequestException, ValueError) as exc:
            raise PolicyError("OPA is unreachable or answered garbage") from exc
        if not isinstance(answer, dict) or "result" not in answer:
            raise PolicyError(f"{self._rule} is undefined on the OPA server")
        return parse_plan(answer["result"], policy_input, self._revision)

    def close(self) -> None:
        """Close every thread's HTTP session."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close_connection()
