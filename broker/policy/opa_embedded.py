"""OPA's own Rego engine, embedded in this process (``[policy] engine = "opa-embedded"``).

The engine is OPA's Go package ``github.com/open-policy-agent/opa/v1/rego`` (v1.20.2 in the
pinned wheel), built as a C shared library and driven through ctypes by the PyPI package
``opa-golib-python-bindings`` (import name ``opa_bindings``). It is the engine an operator's
OPA server runs, without the server: the same bundle, the same rule, the same checked
:class:`Plan` as :class:`~broker.policy.engine.RegorusEngine`, and the same failures (any
evaluation error or an undefined rule denies; a bundle that does not parse or compile is a
:class:`PolicyLoadError` naming the file and line OPA reports).

Installation. The package is optional and pinned (``opa-golib-python-bindings==0.4.4``). Its
metadata says ``Requires-Python >= 3.14``, but the wheel is ``py3-none-manylinux_2_34``: a
stdlib-only ctypes wrapper with no 3.14-only code, around a Go library (glibc >= 2.34). So
``make install`` installs it with ``pip --ignore-requires-python``, which a pyproject
dependency cannot express, pinned by hash (``requirements-opa-embedded.txt``);
``tests/unit/policy/test_opa_differential.py`` is the evidence that it works on this project's
Python. Without it, this engine refuses to load and says how to install it.

Threads. One ``opa_bindings.OpaEngine`` serializes its evaluations behind a lock, and ctypes
releases the GIL while Go evaluates, so engines on different threads really run at once. This
module therefore keeps a small pool: at most ``max_engines`` (one per CPU by default) engines,
built on demand and lent to one decision at a time. Measured on this 2-CPU machine with the
shipped bundle and the 20-field input, two threads deciding 500 times each: one shared engine
~1,730 µs per decision, one engine per thread ~1,460 µs. An engine costs ~1 ms to fill and
~11 ms to compile on its first evaluation; memory: ~23 MB for the Go runtime and the first
engine, ~1.5 MB for each further one.

Lifecycle. Every engine is closed explicitly, by a thread that is calling into OPA anyway, and
never by the garbage collector: ``opa_bindings.OpaEngine`` sits in a reference cycle (its
ctypes callback holds a bound method), so left to itself it would be destroyed by whichever
thread happens to trigger a collection, at whatever point that thread is. When an
:class:`OpaEmbeddedEngine` is dropped (a policy reload replaced it), a finalizer only moves its
pooled engines to a module-level queue of retired engines (a queue put is safe anywhere); the
next decision or build on any thread closes them (:func:`close_retired`).

The Go runtime does not survive ``fork()``: the broker never forks after loading it (its worker
processes are spawned with ``exec``, the sandbox's zygote is a fresh interpreter).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import queue
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.policy.contract import Plan, PolicyError, PolicyInput, PolicyLoadError, parse_plan
from broker.policy.engine import DEFAULT_RULE

if TYPE_CHECKING:
    from broker.policy.bundle import Bundle

DISTRIBUTION = "opa-golib-python-bindings"
PINNED_VERSION = "0.4.4"
INSTALL_HINT = (
    "install it with `make install`, or `.venv/bin/pip install --ignore-requires-python "
    f"--require-hashes -r requirements-opa-embedded.txt` ({DISTRIBUTION}=={PINNED_VERSION}; its "
    "metadata asks for Python 3.14 but the wheel is a ctypes binding that runs on 3.11, and "
    "needs glibc >= 2.34)"
)

# Codes of an input the bindings cannot hand to Go (the adapter's own, and the bindings').
_BAD_INPUT = frozenset({"invalid_input", "invalid_argument", "invalid_json"})

# "file.rego:12: rego_parse_error: unexpected } token" inside OPA's "N errors occurred: ..."
_LOCATED = re.compile(r"(?P<file>[^\s:][^:\n]*?):(?P<line>\d+): (?P<msg>[a-z_]+_error: [^\n]*)")


class OpaCallError(Exception):
    """A failed call into the bindings: OPA's error ``code`` and its ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class OpaUndefinedDocument(Exception):
    """The evaluated document is undefined."""


def _bindings() -> Any:
    """The ``opa_bindings`` module; :class:`OpaCallError` ``unavailable`` if it cannot load."""
    try:
        return importlib.import_module("opa_bindings")
    except ImportError as exc:
        raise OpaCallError("unavailable", f"{DISTRIBUTION} is not installed") from exc


class Opa:
    """A typed adapter around one ``opa_bindings.OpaEngine`` (the bindings have no hints).

    Every failure of the bindings becomes :class:`OpaCallError`; an undefined document is
    :class:`OpaUndefinedDocument` (:class:`OpaEmbeddedEngine` turns both into denials).
    """

    def __init__(self) -> None:
        module = _bindings()
        self._error: type[Exception] = module.OpaError
        self._undefined: type[Exception] = module.OpaUndefinedError
        try:
            self._engine: Any = module.OpaEngine()
        except OSError as exc:  # the Go library does not load here (glibc, architecture)
            raise OpaCallError("unavailable", f"libopabridge does not load: {exc}") from None

    def _failure(self, exc: Exception) -> OpaCallError:
        if isinstance(exc, self._error):
            return OpaCallError(
                str(getattr(exc, "code", "unknown")), str(getattr(exc, "message", ""))
            )
        if isinstance(exc, TypeError | ValueError):  # json.dumps of the input or the data
            return OpaCallError("invalid_input", f"not JSON: {type(exc).__name__}: {exc}")
        return OpaCallError("internal", f"{type(exc).__name__}: {exc}")

    def add_policy(self, path: str, source: str) -> None:
        """Add one Rego module (``path`` is the file name OPA's errors cite)."""
        try:
            self._engine.add_policy(path, source)
        except Exception as exc:  # noqa: BLE001 - every failure is reported as OpaCallError
            raise self._failure(exc) from None

    def add_data(self, data: object) -> None:
        """Deep-merge a JSON document into ``data`` (conflicting values are an error)."""
        try:
            self._engine.add_data(data)
        except Exception as exc:  # noqa: BLE001 - as above
            raise self._failure(exc) from None

    def query(self, query: str, input_doc: object = None) -> list[dict[str, Any]]:
        """The bindings of every result of a Rego query (compiles the modules if needed)."""
        try:
            result = self._engine.eval_query(query, input_doc)
        except Exception as exc:  # noqa: BLE001 - as above
            raise self._failure(exc) from None
        return [dict(r) for r in result]

    def document(
        self, path: str, input_doc: object, *, coverage: bool = False
    ) -> tuple[object, dict[str, Any] | None]:
        """The value of ``data.<path>`` and, with ``coverage``, OPA's coverage report."""
        try:
            value = self._engine.eval_document(path, input_doc, coverage=coverage)
        except self._undefined:
            raise OpaUndefinedDocument(path) from None
        except Exception as exc:  # noqa: BLE001 - as above
            raise self._failure(exc) from None
        report = self._engine.last_coverage if coverage else None
        return value, report if isinstance(report, dict) else None

    def close(self) -> None:
        """Release the Go side now (otherwise it is released when this object is collected)."""
        self._engine.close()


# Engines whose owner is gone: closed by the next thread that calls into OPA (see Lifecycle).
_RETIRED: queue.SimpleQueue[Opa] = queue.SimpleQueue()


def _retire(idle: queue.SimpleQueue[Opa]) -> None:
    """Move a dropped pool's engines to ``_RETIRED`` (a finalizer: closes nothing itself)."""
    while True:
        try:
            _RETIRED.put(idle.get_nowait())
        except queue.Empty:
            return


def close_retired() -> int:
    """Close every retired engine now, on this thread; how many were closed."""
    closed = 0
    while not _RETIRED.empty():
        try:
            opa = _RETIRED.get_nowait()
        except queue.Empty:  # another thread took the last one
            break
        opa.close()
        closed += 1
    return closed


@cache
def bindings_problem() -> str | None:
    """Why the embedded OPA engine cannot run here (``None`` when it can), with how to fix it."""
    try:
        Opa().close()
    except OpaCallError as exc:
        return f"{exc.message}; {INSTALL_HINT}"
    return None


def versions() -> dict[str, str]:
    """The bindings' version and the OPA version built into their Go library (for reports)."""
    bindings = importlib.metadata.version(DISTRIBUTION)
    library = Path(_bindings().__file__).parent / "libopabridge.so"
    # Go's build info in the library names the module: "github.com/open-policy-agent/opa\tv1.x"
    found = re.search(
        rb"github\.com/open-policy-agent/opa\t(v[0-9][^\s\x00]*)", library.read_bytes()
    )
    return {"bindings": bindings, "opa": found.group(1).decode() if found else "unknown"}


def opa_error_text(message: str) -> tuple[str, str | None, int | None]:
    """(message, file, line) from an OPA error message (the first error when there are several)."""
    located = _LOCATED.search(message)
    if located is None:
        return (message.strip().splitlines() or ["unknown"])[0], None, None
    return located.group("msg").strip(), located.group("file"), int(located.group("line"))


def _load_error(exc: OpaCallError, default_file: str | None = None) -> PolicyLoadError:
    msg, file, line = opa_error_text(exc.message)
    return PolicyLoadError(msg, file=file or default_file, line=line)


def build_opa(bundle: Bundle, *, include_tests: bool = False) -> Opa:
    """An engine holding the bundle's modules and data, compiled; errors are PolicyLoadError.

    The caller owns the engine and must :meth:`Opa.close` it; an engine that fails to build is
    closed here.
    """
    close_retired()
    try:
        opa = Opa()
    except OpaCallError as exc:
        raise PolicyLoadError(f"the embedded OPA engine is unavailable: {exc.message}") from None
    try:
        _fill(opa, bundle, include_tests=include_tests)
    except BaseException:
        opa.close()
        raise
    return opa


def _fill(opa: Opa, bundle: Bundle, *, include_tests: bool) -> None:
    for path, text in bundle.policies + (bundle.tests if include_tests else ()):
        try:
            opa.add_policy(path, text)
        except OpaCallError as exc:
            raise _load_error(exc, path) from None
    try:
        opa.add_data(dict(bundle.data))
    except OpaCallError as exc:
        raise PolicyLoadError(f"data rejected: {opa_error_text(exc.message)[0]}") from None
    try:
        opa.query("true")  # compiles every module: unsafe variables, conflicts, type errors
    except OpaCallError as exc:
        raise _load_error(exc) from None


def _ref_text(path: list[dict[str, Any]]) -> str:
    return ".".join(str(term.get("value")) for term in path)


def module_asts(opa: Opa, sources: tuple[tuple[str, str], ...]) -> list[tuple[str, dict[str, Any]]]:
    """(file, AST) of each module, parsed by OPA itself (``rego.parse_module``)."""
    asts: list[tuple[str, dict[str, Any]]] = []
    for path, text in sources:
        try:
            rows = opa.query("m := rego.parse_module(input.f, input.s)", {"f": path, "s": text})
        except OpaCallError as exc:
            raise _load_error(exc, path) from None
        ast = rows[0]["m"] if rows else None
        if not isinstance(ast, dict):
            raise PolicyLoadError("OPA returned no AST", file=path)
        asts.append((path, ast))
    return asts


def package_name(ast: dict[str, Any]) -> str:
    """The module's package as ``data.a.b`` (from ``{"package": {"path": [terms]}}``)."""
    return _ref_text(ast.get("package", {}).get("path", []))


class OpaEmbeddedEngine:
    """Evaluates ``rule`` over a loaded :class:`Bundle` with OPA's Go engine, in process.

    Construction loads and compiles the whole bundle once (so a syntax or compile error is a
    :class:`PolicyLoadError` at load time, not at the first call) and checks that the rule's
    package exists. Decisions borrow an engine from a pool of at most ``max_engines``.
    """

    def __init__(
        self, bundle: Bundle, *, rule: str = DEFAULT_RULE, max_engines: int | None = None
    ) -> None:
        if not rule.startswith("data.") or "." not in rule[5:]:
            raise PolicyLoadError(f"rule must look like data.<package>.<rule>, got {rule!r}")
        size = max_engines if max_engines is not None else min(os.cpu_count() or 1, 8)
        if size < 1:
            raise ValueError("max_engines must be >= 1")
        self._bundle = bundle
        self._rule = rule
        self._path = rule[5:]
        first = build_opa(bundle)
        package = rule.rsplit(".", 1)[0]
        try:
            packages = {package_name(ast) for _, ast in module_asts(first, bundle.policies)}
        except BaseException:
            first.close()
            raise
        if package not in packages:
            first.close()
            raise PolicyLoadError(f"no policy defines package {package[5:]} (for {rule})")
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.SimpleQueue[Opa] = queue.SimpleQueue()
        self._idle.put(first)
        self._closed = False
        # Runs when this engine is dropped or closed; it holds the pool, not this object.
        self._finalizer = weakref.finalize(self, _retire, self._idle)

    @property
    def revision(self) -> str:
        """The bundle revision (see :func:`broker.policy.bundle.bundle_revision`)."""
        return self._bundle.revision

    @property
    def rule(self) -> str:
        """The rule evaluated for each decision."""
        return self._rule

    @contextmanager
    def _lease(self) -> Iterator[Opa]:
        if self._closed:
            raise PolicyError("evaluation error: the policy engine was closed")
        close_retired()
        with self._slots:  # at most max_engines holders, so at most max_engines engines
            try:
                opa = self._idle.get_nowait()
            except queue.Empty:
                opa = build_opa(self._bundle)  # loaded once already: a failure here is rare
            try:
                yield opa
            finally:
                (_RETIRED if self._closed else self._idle).put(opa)

    def evaluate(self, policy_input: PolicyInput) -> object:
        """The raw output of the rule (``None`` when undefined); for ``broker policy eval``."""
        document = policy_input.to_json_obj()
        try:
            with self._lease() as opa:
                value, _ = opa.document(self._path, document)
        except OpaUndefinedDocument:
            return None
        except OpaCallError as exc:
            if exc.code in _BAD_INPUT:  # a claim that is not JSON, a NUL, a lone surrogate
                raise PolicyError("the policy input is not JSON", log_reason=exc.message) from None
            msg, file, line = opa_error_text(exc.message)
            where = f" at {file}:{line}" if file else ""
            raise PolicyError(f"evaluation error{where}: {msg}") from None
        except PolicyLoadError as exc:  # a pooled engine that failed to build
            raise PolicyError(f"evaluation error: {exc.reason}") from None
        return value

    def decide(self, policy_input: PolicyInput) -> Plan:
        """Evaluate and parse strictly; an undefined rule denies."""
        raw = self.evaluate(policy_input)
        if raw is None:
            raise PolicyError(f"{self._rule} is undefined for this input")
        return parse_plan(raw, policy_input, self.revision)

    def close(self) -> None:
        """Release the pooled engines now; one lent out is released after its decision.

        Decisions after this are refused (fail closed), not silently re-built.
        """
        self._closed = True
        self._finalizer()
        close_retired()
