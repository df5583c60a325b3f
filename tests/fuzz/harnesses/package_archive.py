"""A vendor's package archive (``.tar.gz``) -> ``PackageStore.add``: extraction with its caps,
then the manifest read against the extracted files.

The first byte picks the layer: even, the rest is an uncompressed tar that the harness gzips
(so mutations reach tar headers, names, links and sizes rather than dying on a CRC); odd, the
rest is the ``.tar.gz`` file itself (gzip and deflate errors). A package that is accepted must
contain only regular files and folders inside the store, and the files its manifest lists.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.packages.archive import ExtractLimits
    from broker.packages.errors import InvalidPackage
    from broker.packages.store import PackageStore

#: ``archive.py`` and ``store.py`` refuse a bad package with ``InvalidPackage``.
EXPECTED = (InvalidPackage,)

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-package-"))
_SOURCE = _DIR / "package.tar.gz"
_DATA = _DIR / "data"
LIMITS = ExtractLimits(max_entries=64, max_file_bytes=256 * 1024, max_total_bytes=1024 * 1024)


def fuzz_one(data: bytes) -> None:
    """Store one archive in a fresh store, check it, and remove it again."""
    if not data:
        return
    raw = data[1:] if data[0] % 2 else gzip.compress(data[1:], compresslevel=1, mtime=0)
    _SOURCE.write_bytes(raw)
    try:
        stored = PackageStore(_DATA, limits=LIMITS).add(_SOURCE)
        root = stored.path
        for path in root.rglob("*"):
            assert not path.is_symlink() and (path.is_file() or path.is_dir()), path
        for name in stored.manifest.files:
            assert os.path.commonpath([root, (root / name).resolve()]) == str(root), name
    except EXPECTED:
        return
    finally:
        shutil.rmtree(_DATA, ignore_errors=True)


if __name__ == "__main__":
    main(fuzz_one)
