"""Copy a vendor's package (folder or ``.tar.gz``) into a fresh directory, refusing what is unsafe.

A package comes from a vendor the broker does not trust, so reading it is defensive:

- only regular files and directories; symbolic and hard links, devices and fifos are refused
  (a link could point outside the package, or at a file the worker must not read);
- no absolute paths, no ``..`` components, no NUL or backslash in names, bounded path length;
- caps on the number of entries, on each file's size and on the total (a gzip bomb stops at
  the total cap, counted while writing, not trusted from the tar header);
- modes are normalised (0644 files, 0755 directories): the worker runs as an unprivileged id
  and must read everything, and nothing in a package is executable anyway (exec is forbidden).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from broker.packages.errors import InvalidPackage

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    """Caps on what one package may contain."""

    max_entries: int = 10_000
    max_file_bytes: int = 1024 * 1024 * 1024
    max_total_bytes: int = 2 * 1024 * 1024 * 1024
    max_path_chars: int = 255


def copy_package(source: Path, dest: Path, limits: ExtractLimits) -> None:
    """Copy ``source`` (folder or ``.tar.gz``/``.tgz``) into the new directory ``dest``."""
    dest.mkdir(mode=0o755)
    budget = _Budget(limits)
    if source.is_dir():
        _copy_folder(source, dest, budget)
    elif source.name.endswith((".tar.gz", ".tgz")):
        _extract_tar(source, dest, budget)
    else:
        raise InvalidPackage(f"{source} is neither a folder nor a .tar.gz archive")


class _Budget:
    def __init__(self, limits: ExtractLimits) -> None:
        self.limits = limits
        self.entries = 0
        self.total = 0

    def entry(self, name: str) -> PurePosixPath:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise InvalidPackage(f"the package has more than {self.limits.max_entries} entries")
        return safe_relative(name, self.limits.max_path_chars)

    def add_bytes(self, n: int, name: str, file_so_far: int) -> None:
        self.total += n
        if file_so_far > self.limits.max_file_bytes:
            raise InvalidPackage(f"{name} is larger than {self.limits.max_file_bytes} bytes")
        if self.total > self.limits.max_total_bytes:
            raise InvalidPackage(f"the package is larger than {self.limits.max_total_bytes} bytes")


def safe_relative(name: str, max_chars: int, what: str = "package entry") -> PurePosixPath:
    """``name`` as a path inside the package, or ``InvalidPackage`` if it could leave it.

    Shared by archive members and the manifest's ``files`` (``what`` names which it is).
    """
    if not name or len(name) > max_chars or "\0" in name or "\\" in name:
        raise InvalidPackage(f"{what} name {name[:80]!r} is empty, too long or malformed")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise InvalidPackage(f"{what} {name[:80]!r} is an absolute path")
    parts = [part for part in path.parts if part != "."]
    if not parts or ".." in parts:
        raise InvalidPackage(f"{what} {name[:80]!r} leaves the package ('..')")
    return PurePosixPath(*parts)


def _write(stream: IO[bytes], target: Path, budget: _Budget, name: str) -> None:
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    written = 0
    with target.open("xb") as out:
        while chunk := stream.read(_CHUNK):
            written += len(chunk)
            budget.add_bytes(len(chunk), name, written)
            out.write(chunk)
    target.chmod(0o644)


def _copy_folder(source: Path, dest: Path, budget: _Budget) -> None:
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            rel = budget.entry(path.relative_to(source).as_posix())
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                (dest / rel).mkdir(mode=0o755, exist_ok=True)
            elif stat.S_ISREG(mode):
                with path.open("rb") as stream:
                    _write(stream, dest / rel, budget, str(rel))
            else:
                raise InvalidPackage(f"package entry {str(rel)!r} is a link or special file")


def _extract_tar(source: Path, dest: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(source, mode="r:gz") as archive:
            for member in archive:
                rel = budget.entry(member.name)
                if member.isdir():
                    (dest / rel).mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise InvalidPackage(f"package entry {str(rel)!r} is a link or special file")
                if (dest / rel).exists():
                    raise InvalidPackage(f"package entry {str(rel)!r} appears twice")
                stream = archive.extractfile(member)
                if stream is None:  # pragma: no cover - isfile() members always have data
                    raise InvalidPackage(f"package entry {str(rel)!r} has no data")
                with stream:
                    _write(stream, dest / rel, budget, str(rel))
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise InvalidPackage(f"package entry {exc.filename} appears twice") from None
        raise InvalidPackage(f"{source.name} is not a readable .tar.gz: {exc}") from exc


def remove_tree(path: Path) -> None:
    """Delete a directory tree, ignoring a concurrent removal."""
    shutil.rmtree(path, ignore_errors=True)
