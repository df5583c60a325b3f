"""Manifest parsing: regressions found by fuzzing (the other manifest tests: tests/sandbox)."""

from __future__ import annotations

import pytest

from broker.packages.errors import InvalidPackage
from broker.packages.manifest import Manifest

BASE = b'{"name": "m", "version": "1", "entry_point": "model:predict", "files": [%s]}'


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b'"/etc/passwd"', "is an absolute path"),
        (b'"../../etc/passwd"', "leaves the package"),
        (b'"data/../../x"', "leaves the package"),
        (b'"a\\\\b"', "malformed"),
        (b'"a\\u0000b"', "malformed"),
        (b'"."', "leaves the package"),
        (b'"' + b"x" * 256 + b'"', "too long"),
    ],
)
def test_listed_files_may_not_leave_the_package(name: bytes, message: str) -> None:
    # Found with the package_manifest fuzz harness (its property check): `files` entries were
    # only checked for being non-empty strings, and PackageStore.add tests `<package>/<name>`
    # with is_file(), so a manifest could probe whether any file exists on the broker's host.
    with pytest.raises(InvalidPackage, match=rf"manifest files\[1\] .*{message}"):
        Manifest.from_bytes(BASE % (b'"ok.py", ' + name))


def test_listed_files_inside_the_package_are_accepted() -> None:
    manifest = Manifest.from_bytes(BASE % b'"model.py", "./data/x.csv", "data/sub/y"')
    assert manifest.files == ("model.py", "./data/x.csv", "data/sub/y")
    assert manifest.name == "m"  # the check of `files` once overwrote the package's name
