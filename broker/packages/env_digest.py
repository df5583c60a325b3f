"""The digest manifest of a prepared environment: recorded by ``prepare``, checked before use.

Why: a package is content-addressed and re-hashed at every worker start, but its prepared
environment (a virtualenv and artefacts, hundreds of MB) is not, and it is bound read-only into
every worker of that package. A file changed there after ``prepare`` (a ``pip install`` by hand,
another process writing into site-packages, a disk fault) would run, unnoticed, in every worker.
So ``prepare`` records what it built, and the broker checks it before a pool uses it.

The manifest lives at ``<envs_root>/sha256-<hex>.manifest.json``: beside the environment, never
inside it (nothing inside the tree can vouch for the tree, and no worker ever sees the file). It
is written atomically (temporary file, fsync, rename) after the environment is renamed into
place, so an environment without one is either half-recorded or from an older broker: both are
treated as "not prepared", and ``broker packages prepare`` rebuilds them rather than bless
whatever is on disk now. Format (version 1)::

    {"format": "broker-env-manifest-v1", "package": "sha256:<package digest>",
     "entries": [[path, kind, mode, size, value], ...]}

one entry per directory (kind ``d``, value ``""``), regular file (``f``, value the SHA-256 of its
content) and symbolic link (``l``, value its target: ``venv/bin/python`` is one), sorted by path
as UTF-8 bytes; ``mode`` holds the permission bits (0 for links). Any other kind of file refuses
the environment.

Cost and the cache (the trade-off chosen): re-hashing the whole tree at every worker start
would cost more than the start itself (the ~220 MB MiniLM environment, 4,000 entries, takes
0.3-1.2 s to hash from the page cache on this shared VM, 1.9 s cold; see ``sandbox/README.md``).
:class:`EnvironmentVerifier` therefore hashes an environment once per process, and then
remembers the manifest's own SHA-256 and an ``lstat`` snapshot of every entry (device, inode,
mode, size, mtime, ctime). Each later check (every worker start) re-reads the manifest and
re-stats the tree, about 50 ms for MiniLM: identical, it is still verified; any difference, it
is hashed again. Directory mtimes alone would miss a file
rewritten in place; a file's ctime is set by the kernel on every write, chmod, rename or link
and cannot be set back from user space, so even an edit that restores the size and mtime shows.

Not covered, said plainly: a change made in the milliseconds between the check and a worker's
bind mount, or while workers are running (they see it until they retire); and a writer with the
broker's own uid who rewrites the manifest too. The manifest catches accidents and other
writers, not the broker's own account turned hostile.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from broker.logging import get_logger
from broker.packages.errors import EnvironmentTampered, InvalidPackage, PackageNotPrepared

FORMAT: Final = "broker-env-manifest-v1"
_SUFFIX: Final = ".manifest.json"
_CHUNK: Final = 1024 * 1024
_FILE, _DIR, _LINK = "f", "d", "l"
_KIND_NAMES: Final = {_FILE: "a file", _DIR: "a directory", _LINK: "a link"}

_log = get_logger(__name__)

StatKey = tuple[int, int, int, int, int, int]  # st_dev, st_ino, st_mode, st_size, mtime, ctime
Snapshot = tuple[tuple[str, StatKey], ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the manifest: a directory, regular file or symbolic link, and what it holds."""

    path: str
    kind: str
    mode: int
    size: int
    value: str

    def to_json(self) -> list[str | int]:
        """The manifest's compact list form."""
        return [self.path, self.kind, self.mode, self.size, self.value]


def manifest_path(env_root: Path) -> Path:
    """Where the manifest of the environment at ``env_root`` is kept (beside it, not in it)."""
    return env_root.with_name(env_root.name + _SUFFIX)


def build_manifest(env_root: Path, package_digest: str) -> bytes:
    """Hash every entry under ``env_root`` into a manifest (bytes, ready for ``write_manifest``).

    Paths are relative, so a staging directory can be recorded before it is renamed into place.
    """
    entries = []
    for rel, info in _scan(env_root):
        kind = _kind(info.st_mode)
        if kind is None:
            raise InvalidPackage(f"the prepared environment holds {rel!r}, a special file")
        entries.append(_entry(env_root, rel, kind, info))
    try:
        return orjson.dumps(
            {"format": FORMAT, "package": package_digest, "entries": [e.to_json() for e in entries]}
        )
    except orjson.JSONEncodeError:
        raise InvalidPackage(
            "the prepared environment holds a file name that is not UTF-8"
        ) from None


def write_manifest(env_root: Path, data: bytes) -> None:
    """Write the manifest of ``env_root`` atomically: readers see the old file or the new one."""
    target = manifest_path(env_root)
    fd, temporary = tempfile.mkstemp(prefix=".manifest-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temporary).chmod(0o644)
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def discard_manifest(env_root: Path) -> None:
    """Remove the manifest before its environment is replaced (a rebuild records a new one)."""
    manifest_path(env_root).unlink(missing_ok=True)


class EnvironmentVerifier:
    """Checks environments against their manifests; hashes each once per process unless it changes.

    Thread-safe: concurrent checks of one environment wait for a single hashing pass.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}
        # root -> (manifest SHA-256, snapshot, first difference or None): the last full check.
        # A refusal is remembered too, so calls to a tampered model do not each re-hash it.
        self._checked: dict[Path, tuple[str, Snapshot, tuple[str, str] | None]] = {}

    def verify(self, env_root: Path, package_digest: str) -> None:
        """Return if ``env_root`` matches its manifest; raise a ``PackageNotPrepared`` otherwise.

        :class:`EnvironmentTampered` names the first differing path (in manifest order) and is
        logged as ``environment_tampered``; a missing or unreadable manifest raises
        :class:`PackageNotPrepared` asking for ``broker packages prepare`` again.
        """
        raw = _read_manifest(env_root, package_digest)
        key = hashlib.sha256(raw).hexdigest()
        with self._lock_for(env_root):
            listing = _scan(env_root)  # stat first: a change during hashing shows next time
            snapshot = tuple((rel, _stat_key(info)) for rel, info in listing)
            last = self._checked.get(env_root)
            if last is not None and last[:2] == (key, snapshot):
                difference = last[2]
            else:
                self._checked.pop(env_root, None)
                difference = _first_difference(env_root, _parse(raw, package_digest), listing)
                self._checked[env_root] = (key, snapshot, difference)
        if difference is not None:
            path, change = difference
            _log.warning(
                "environment_tampered",
                package=package_digest,
                environment=str(env_root),
                path=path,
                change=change,
            )
            raise EnvironmentTampered(package_digest, path, change)

    def _lock_for(self, env_root: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(env_root, threading.Lock())


def _read_manifest(env_root: Path, package_digest: str) -> bytes:
    try:
        return manifest_path(env_root).read_bytes()
    except FileNotFoundError:
        _log.warning(
            "environment_without_manifest", package=package_digest, environment=str(env_root)
        )
        raise PackageNotPrepared(
            package_digest,
            "has a prepared environment without a digest manifest (built by an older broker, "
            "or its preparation was interrupted)",
            when="again",
        ) from None
    except OSError as exc:
        raise PackageNotPrepared(
            package_digest,
            f"has an environment manifest that cannot be read ({exc.strerror})",
            when="again",
        ) from None


def _parse(raw: bytes, package_digest: str) -> dict[str, Entry]:
    """The manifest's entries by path; a malformed one reads as a tampered manifest."""
    try:
        entries = _entries(orjson.loads(raw), package_digest)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        _log.warning(
            "environment_tampered", package=package_digest, path="(manifest)", change="malformed"
        )
        raise EnvironmentTampered(package_digest, "(its manifest)", "is malformed") from None
    return {entry.path: entry for entry in entries}


def _entries(data: dict[str, object], package_digest: str) -> list[Entry]:
    if data["format"] != FORMAT or data["package"] != package_digest:
        raise ValueError("another format or another package")
    rows = data["entries"]
    if not isinstance(rows, list):
        raise TypeError("entries must be a list")
    return [Entry(str(p), str(k), int(m), int(s), str(v)) for p, k, m, s, v in rows]


def _first_difference(
    env_root: Path, expected: dict[str, Entry], listing: list[tuple[str, os.stat_result]]
) -> tuple[str, str] | None:
    """(path, how it differs) for the first differing path in byte order, or None."""
    found = dict(listing)
    for rel in sorted(expected.keys() | found.keys(), key=_sort_key):
        want = expected.get(rel)
        info = found.get(rel)
        if want is None:
            return rel, "was added"
        if info is None:
            return rel, "is missing"
        change = _change(env_root / rel, want, info)
        if change is not None:
            return rel, change
    return None


def _change(path: Path, want: Entry, info: os.stat_result) -> str | None:
    """How the entry at ``path`` differs from ``want`` (cheapest checks first), or None."""
    kind = _kind(info.st_mode)
    if kind != want.kind:
        now = _KIND_NAMES.get(kind or "", "a special file")
        return f"was {_KIND_NAMES.get(want.kind, want.kind)} and is now {now}"
    if kind == _LINK:
        return "points somewhere else" if str(path.readlink()) != want.value else None
    if stat.S_IMODE(info.st_mode) != want.mode:
        return f"changed mode from {want.mode:o} to {stat.S_IMODE(info.st_mode):o}"
    if kind == _FILE and (info.st_size != want.size or _sha256(path) != want.value):
        return "content changed"
    return None


def _scan(env_root: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under ``env_root`` (not following links), with its lstat, in byte order."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(env_root / prefix if prefix else env_root) as entries:
            for entry in entries:
                rel = f"{prefix}/{entry.name}" if prefix else entry.name
                info = entry.stat(follow_symlinks=False)
                found.append((rel, info))
                if stat.S_ISDIR(info.st_mode):
                    pending.append(rel)
    found.sort(key=lambda item: _sort_key(item[0]))
    return found


def _entry(env_root: Path, rel: str, kind: str, info: os.stat_result) -> Entry:
    if kind == _DIR:
        return Entry(rel, kind, stat.S_IMODE(info.st_mode), 0, "")
    if kind == _LINK:
        return Entry(rel, kind, 0, 0, str((env_root / rel).readlink()))
    return Entry(rel, kind, stat.S_IMODE(info.st_mode), info.st_size, _sha256(env_root / rel))


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return _FILE
    if stat.S_ISDIR(mode):
        return _DIR
    if stat.S_ISLNK(mode):
        return _LINK
    return None


def _stat_key(info: os.stat_result) -> StatKey:
    return (
        info.st_dev,
        info.st_ino,
        info.st_mode,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )


def _sha256(path: Path) -> str:
    """SHA-256 of a regular file's content; a link swapped in since the lstat is not followed."""
    digest = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sort_key(rel: str) -> bytes:
    return rel.encode("utf-8", "surrogateescape")
