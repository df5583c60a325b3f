"""A vendor's ``manifest.json`` -> ``Manifest``.

Everything the manifest names is later used inside the package folder (the entry point's
module, ``files``) or handed to pip (``requirements``), so what it accepts is checked here too:
names and versions of their documented form, ``files`` relative to the package and never
leaving it, requirements without options, URLs or paths.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.packages.errors import InvalidPackage
    from broker.packages.manifest import Manifest

#: ``Manifest.from_bytes``: "InvalidPackage names the bad key".
EXPECTED = (InvalidPackage,)


def fuzz_one(data: bytes) -> None:
    """Parse one manifest and check what it accepted."""
    try:
        manifest = Manifest.from_bytes(data)
    except EXPECTED:
        return
    assert ":" in manifest.entry_point
    for name in manifest.files:
        path = PurePosixPath(name)
        assert not path.is_absolute() and ".." not in path.parts, name
        assert "\x00" not in name and "\\" not in name, name
    for requirement in manifest.requirements:
        assert not requirement.lstrip().startswith("-") and "://" not in requirement


if __name__ == "__main__":
    main(fuzz_one)
