"""The content digest of a model package: what it is stored under and re-checked against.

Definition (version 1), chosen so that anyone can recompute it with a few lines of code::

    listing = b""
    for each regular file, sorted by its relative POSIX path as UTF-8 bytes:
        listing += path_utf8 + b"\\0" + str(size) + b"\\0" + sha256(content).hexdigest() + b"\\n"
    digest = "sha256:" + sha256(b"broker-package-v1\\n" + listing).hexdigest()

Only paths and contents count: file modes, times and owners do not (the store normalises them),
and directories exist only through the files in them. The path sits before the NUL and the
size, so no two different packages share a listing. A package holds regular files and
directories only; any other entry (link, device, fifo) is refused before the digest is taken.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Final

from broker.packages.errors import InvalidPackage

DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_DOMAIN: Final = b"broker-package-v1\n"
_CHUNK: Final = 1024 * 1024


def package_digest(root: Path) -> str:
    """The digest of the files under ``root`` (which must hold regular files and dirs only)."""
    outer = hashlib.sha256(_DOMAIN)
    for rel, path in sorted(_walk(root), key=lambda item: item[0].encode()):
        inner = hashlib.sha256()
        size = 0
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                inner.update(chunk)
                size += len(chunk)
        outer.update(rel.encode() + b"\0" + str(size).encode() + b"\0")
        outer.update(inner.hexdigest().encode() + b"\n")
    return "sha256:" + outer.hexdigest()


def dir_name(digest: str) -> str:
    """The store's directory name for ``digest`` (``sha256-<hex>``: no ':' in file names)."""
    check_digest(digest)
    return digest.replace(":", "-", 1)


def check_digest(digest: str, field: str = "digest") -> None:
    """InvalidPackage unless ``digest`` looks like ``sha256:<64 lowercase hex>``."""
    if not DIGEST_RE.fullmatch(digest):
        raise InvalidPackage(f"{field} must look like sha256:<64 lowercase hex digits>")


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative POSIX path, path); refuses anything else."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InvalidPackage(f"package entry {rel!r} is not a regular file or directory")
            found.append((rel, path))
    return found
