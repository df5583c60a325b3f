"""The package manifest (``manifest.json``): what a vendor declares about its model package.

Example::

    {
      "name": "iris-sklearn",
      "version": "1.0.0",
      "entry_point": "iris_model:predict",
      "requirements": ["scikit-learn>=1.3"],
      "prepare": "iris_model:train",
      "resources": {"memory_mb": 1024, "cpu_seconds_per_call": 5, "concurrency": 2},
      "files": ["iris_model.py"]
    }

``entry_point`` is ``module:callable``: imported from the package root inside the sandbox,
called with the payload (a JSON object) and returning a JSON object. A chat model may stream: for
``InvokeStream`` its payload carries ``"stream": true``, and it may then return a generator of
``chat.completion.chunk`` objects (``broker.runtimes.sandbox.chat_stream``). ``requirements``
are pip requirement strings installed once by ``prepare`` into a virtualenv outside the sandbox.
``prepare`` (optional) is a ``module:callable`` run once in that environment, *outside* the
sandbox, with a directory to write artefacts into (a trained model, an index); the worker sees
that directory read-only at :data:`ARTEFACTS_MOUNT`. ``files`` (optional) lists paths that must
be present, so a truncated archive is caught at ``add`` rather than at the first call; they are
relative to the package and may not leave it.
Unknown keys are refused: a typo in ``resources`` must not silently give default limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from broker.packages.archive import safe_relative
from broker.packages.errors import InvalidPackage

MANIFEST_NAME: Final = "manifest.json"
ARTEFACTS_MOUNT: Final = "/env/0"  # where the prepare step's artefacts appear inside the worker
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_REQUIREMENTS: Final = 64
MAX_PATH_CHARS: Final = 255  # as ExtractLimits.max_path_chars: no longer name can exist

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
_ENTRY_RE: Final = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# A pip requirement without options, URLs or local paths: the operator's pip config decides the
# index, never the vendor's manifest (``--index-url evil`` or ``file:///etc`` are refused).
_REQUIREMENT_RE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[\w,.-]{1,100}\])?"
    r"( ?[<>=!~]=?=? ?[A-Za-z0-9.*+!_-]{1,64}( ?, ?[<>=!~]=?=? ?[A-Za-z0-9.*+!_-]{1,64}){0,7})?"
)
_KEYS: Final = frozenset(
    {"name", "version", "entry_point", "requirements", "prepare", "resources", "files"}
)
_RESOURCE_KEYS: Final = frozenset({"memory_mb", "cpu_seconds_per_call", "concurrency"})


@dataclass(frozen=True, slots=True)
class Resources:
    """What one worker of the package may use; the pool turns these into ``WorkerLimits``."""

    memory_mb: int = 1024
    cpu_seconds_per_call: int = 10
    concurrency: int = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated ``manifest.json``."""

    name: str
    version: str
    entry_point: str
    requirements: tuple[str, ...] = ()
    prepare: str = ""
    resources: Resources = Resources()
    files: tuple[str, ...] = ()

    @property
    def needs_environment(self) -> bool:
        """Whether ``broker packages prepare`` must run before the package can be served."""
        return bool(self.requirements or self.prepare)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse and validate manifest bytes; :class:`InvalidPackage` names the bad key."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidPackage(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidPackage(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidPackage(f"{MANIFEST_NAME} must be a JSON object")
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Validate a decoded manifest."""
        unknown = set(data) - _KEYS
        if unknown:
            raise InvalidPackage(f"{MANIFEST_NAME} has unknown keys: {', '.join(sorted(unknown))}")
        name = _string(data, "name", _NAME_RE, "lowercase letters, digits, '.', '_', '-'")
        version = _string(data, "version", _VERSION_RE, "letters, digits, '.', '+', '_', '-'")
        entry = _string(data, "entry_point", _ENTRY_RE, "module:callable")
        prepare = ""
        if data.get("prepare"):
            prepare = _string(data, "prepare", _ENTRY_RE, "module:callable")
        requirements = _strings(data, "requirements")
        if len(requirements) > MAX_REQUIREMENTS:
            raise InvalidPackage(f"manifest requirements has more than {MAX_REQUIREMENTS} entries")
        for i, req in enumerate(requirements):
            if not _REQUIREMENT_RE.fullmatch(req.strip()):
                raise InvalidPackage(
                    f"manifest requirements[{i}] must be a plain requirement such as "
                    "'numpy>=1.26' (no options, URLs or paths)"
                )
        files = _strings(data, "files")
        for i, listed in enumerate(files):
            # Checked at ``add`` as ``<package>/<name>``: a name that leaves the package would
            # probe the host's files (found with the package_manifest fuzz harness).
            safe_relative(listed, MAX_PATH_CHARS, f"manifest files[{i}]")
        return cls(
            name=name,
            version=version,
            entry_point=entry,
            requirements=requirements,
            prepare=prepare,
            resources=_resources(data.get("resources", {})),
            files=files,
        )


def _string(data: dict[str, Any], key: str, pattern: re.Pattern[str], form: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidPackage(f"manifest {key} must be a string of {form}")
    return value


def _strings(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidPackage(f"manifest {key} must be a list of non-empty strings")
    return tuple(value)


def _resources(value: Any) -> Resources:
    if not isinstance(value, dict):
        raise InvalidPackage("manifest resources must be an object")
    unknown = set(value) - _RESOURCE_KEYS
    if unknown:
        raise InvalidPackage(f"manifest resources has unknown keys: {', '.join(sorted(unknown))}")
    caps = {"memory_mb": 64 * 1024, "cpu_seconds_per_call": 3600, "concurrency": 64}
    defaults = Resources()
    kwargs: dict[str, int] = {}
    for key, cap in caps.items():
        number = value.get(key, getattr(defaults, key))
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= cap:
            raise InvalidPackage(f"manifest resources.{key} must be an integer from 1 to {cap}")
        kwargs[key] = number
    return Resources(**kwargs)
