"""Policy bundles on disk and their revision (the store that hot-swaps engines is :mod:`.store`).

A bundle is a directory: every ``*.rego`` file is a policy (``*_test.rego`` files are its tests)
and every ``*.json`` file is data, mounted as in OPA bundles: ``broker/data.json`` becomes
``data.broker``. Hidden files and directories (``.git``, editor swap files) are ignored.

Revision: ``"sha256:" + hex(SHA-256(entries))`` where the entries are the bundle's ``.rego``
and ``.json`` files (tests included: changing a test is a new revision) sorted by relative POSIX
path (compared as UTF-8 bytes), each written as::

    u64be(len(path)) || path (UTF-8) || u64be(len(content)) || content (raw bytes)

The length prefixes make the encoding unambiguous, so no two different bundles share a digest
by moving bytes between a name and a content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.policy.contract import PolicyLoadError

Source = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Bundle:
    """A loaded bundle: policy and test sources (relative path, text), merged data, revision."""

    root: Path
    policies: tuple[Source, ...]
    tests: tuple[Source, ...]
    data: Mapping[str, Any]
    revision: str
    #: The raw (relative path, content) entries the revision is the digest of, sorted: what a
    #: cluster stores so that other replicas load exactly this bundle.
    files: tuple[tuple[str, bytes], ...] = ()


def _bundle_files(root: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".rego", ".json"):
            files.append((rel.as_posix(), path))
    files.sort(key=lambda item: item[0].encode())
    return files


def bundle_revision(entries: list[tuple[str, bytes]]) -> str:
    """The revision of sorted (relative path, content) entries; see the module docstring."""
    digest = hashlib.sha256()
    for rel, content in entries:
        name = rel.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return "sha256:" + digest.hexdigest()


def _mount(data: dict[str, Any], rel: str, value: Any) -> None:
    """Place ``value`` at the data path named by the file's directory, refusing overlaps."""
    parts = list(Path(rel).parent.parts)
    if not parts:
        if not isinstance(value, dict):
            raise PolicyLoadError("a data file at the bundle root must hold an object", file=rel)
        target, items = data, value
    else:
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise PolicyLoadError(f"data path {'.'.join(parts)} overlaps a value", file=rel)
        if not isinstance(value, dict):
            if parts[-1] in target:
                raise PolicyLoadError(f"data.{'.'.join(parts)} is defined twice", file=rel)
            target[parts[-1]] = value
            return
        items = value
        target = target.setdefault(parts[-1], {})
    for key, item in items.items():
        if key in target:
            raise PolicyLoadError(f"data key {key!r} is defined twice", file=rel)
        target[key] = item


def load_bundle(root: Path | str) -> Bundle:
    """Read a bundle directory; a missing directory or a malformed JSON file raises
    :class:`PolicyLoadError` (with the JSON error's line)."""
    root = Path(root)
    if not root.is_dir():
        raise PolicyLoadError(f"policy bundle directory {root} does not exist")
    return bundle_from_files(root, [(rel, path.read_bytes()) for rel, path in _bundle_files(root)])


def bundle_from_files(root: Path, files: list[tuple[str, bytes]]) -> Bundle:
    """A bundle from (relative path, content) entries, as ``load_bundle`` reads them from
    ``root``; ``root`` only names where they came from (a directory, or the cluster's store)."""
    entries = sorted(
        ((rel, content) for rel, content in files if rel.endswith((".rego", ".json"))),
        key=lambda item: item[0].encode(),
    )
    policies: list[Source] = []
    tests: list[Source] = []
    data: dict[str, Any] = {}
    for rel, content in entries:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyLoadError("not UTF-8", file=rel) from None
        if rel.endswith("_test.rego"):
            tests.append((rel, text))
        elif rel.endswith(".rego"):
            policies.append((rel, text))
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PolicyLoadError(exc.msg, file=rel, line=exc.lineno) from None
            _mount(data, rel, value)
    if not policies:
        raise PolicyLoadError(f"policy bundle {root} holds no .rego policy")
    return Bundle(
        root, tuple(policies), tuple(tests), data, bundle_revision(entries), tuple(entries)
    )


def bundle_fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every bundle file: cheap to compute, changes on any edit."""
    found: list[tuple[str, int, int]] = []
    for rel, path in _bundle_files(root) if root.is_dir() else []:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((rel, stat.st_mtime_ns, stat.st_size))
    return tuple(found)
