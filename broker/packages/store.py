"""The content-addressed package store: ``<data_dir>/packages/sha256-<hex>/``.

``add`` copies a vendor's folder or archive into a temporary directory with the checks of
:mod:`broker.packages.archive`, computes its digest (:mod:`broker.packages.digest`) and renames
it into place, so a package directory either is complete or does not exist. ``get`` recomputes
the digest every time (each worker start): a file changed on disk after ``add`` is refused with
:class:`PackageTampered`, never served. Environments (``prepare``) live apart, in
:mod:`broker.packages.environment`, because they are built, not copied, and are large.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from broker.packages.archive import ExtractLimits, copy_package, remove_tree
from broker.packages.digest import check_digest, dir_name, package_digest
from broker.packages.errors import InvalidPackage, PackageNotFound, PackageTampered
from broker.packages.manifest import MANIFEST_NAME, Manifest


@dataclass(frozen=True, slots=True)
class StoredPackage:
    """A package in the store whose files matched its digest when it was returned."""

    digest: str
    path: Path
    manifest: Manifest


class PackageStore:
    """Adds, verifies and lists packages under ``<data_dir>/packages``; safe across threads."""

    def __init__(self, data_dir: Path, *, limits: ExtractLimits | None = None) -> None:
        self.root = Path(data_dir) / "packages"
        self._limits = limits or ExtractLimits()

    def add(self, source: Path) -> StoredPackage:
        """Store the package at ``source`` (folder or ``.tar.gz``); idempotent per content."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            unpacked = staging / "package"
            copy_package(Path(source), unpacked, self._limits)
            manifest = _read_manifest(unpacked)
            digest = package_digest(unpacked)
            final = self.root / dir_name(digest)
            try:
                unpacked.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
                return self.get(digest)  # the same content is already stored: check it is intact
            return StoredPackage(digest=digest, path=final, manifest=manifest)
        finally:
            remove_tree(staging)

    def get(self, digest: str) -> StoredPackage:
        """The package ``digest``, its files re-hashed first (PackageTampered if changed)."""
        check_digest(digest)
        path = self.root / dir_name(digest)
        if not path.is_dir():
            raise PackageNotFound(digest)
        try:
            actual = package_digest(path)
        except InvalidPackage:
            actual = "(a link or special file was added)"
        if actual != digest:
            raise PackageTampered(digest, actual)
        return StoredPackage(digest=digest, path=path, manifest=_read_manifest(path))

    def list(self) -> list[StoredPackage]:
        """Every stored package, verified; a tampered one raises rather than being skipped."""
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if p.name.startswith("sha256-"))
        return [self.get(name.replace("-", ":", 1)) for name in names]


def _read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise InvalidPackage(f"the package has no {MANIFEST_NAME} at its top level")
    manifest = Manifest.from_bytes(path.read_bytes())
    module = manifest.entry_point.partition(":")[0].split(".")[0]
    if not ((root / f"{module}.py").is_file() or (root / module / "__init__.py").is_file()):
        raise InvalidPackage(f"the entry point's module {module!r} is not in the package")
    for name in manifest.files:
        if not (root / name).is_file():
            raise InvalidPackage(f"the manifest lists {name!r}, which is not in the package")
    return manifest
