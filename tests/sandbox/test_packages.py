"""Package store: content digest, safe extraction, tamper detection, manifests, prepare."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from broker.packages.archive import ExtractLimits
from broker.packages.digest import package_digest
from broker.packages.environment import Environments
from broker.packages.errors import (
    EnvironmentTampered,
    InvalidPackage,
    PackageNotFound,
    PackageNotPrepared,
    PackageTampered,
)
from broker.packages.manifest import Manifest
from broker.packages.store import PackageStore
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.pool import Violation, WorkerPools
from broker.runtimes.sandbox.runtime import sandboxed_prepare_hook

POOL_PACKAGE = Path(__file__).parent / "pool_pkg"
IRIS_PACKAGE = Path(__file__).parents[2] / "examples" / "models" / "iris-sklearn"


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _package_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [_file(p.name, p.read_bytes()) for p in sorted(POOL_PACKAGE.iterdir()) if p.is_file()]


def test_add_folder_and_archive_give_the_same_digest(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "data")
    from_folder = store.add(POOL_PACKAGE)
    archive = _tar(tmp_path / "pkg.tar.gz", _package_members())
    from_archive = store.add(archive)
    assert from_folder.digest == from_archive.digest == package_digest(POOL_PACKAGE)
    assert from_folder.path.name == from_folder.digest.replace(":", "-")
    assert from_folder.manifest.name == "pool-probe"
    assert [p.digest for p in store.list()] == [from_folder.digest]


def test_digest_covers_paths_and_contents(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(POOL_PACKAGE, copy)
    before = package_digest(copy)
    (copy / "pool_model.py").rename(copy / "renamed.py")
    assert package_digest(copy) != before


def test_a_tampered_file_is_refused_at_load(tmp_path: Path) -> None:
    store = PackageStore(tmp_path)
    package = store.add(POOL_PACKAGE)
    target = package.path / "pool_model.py"
    target.write_text(target.read_text() + "\nimport os  # injected\n")
    with pytest.raises(PackageTampered, match="modified on disk"):
        store.get(package.digest)


def test_an_added_file_or_link_is_tampering_too(tmp_path: Path) -> None:
    store = PackageStore(tmp_path)
    package = store.add(POOL_PACKAGE)
    (package.path / "extra.py").write_text("x = 1\n")
    with pytest.raises(PackageTampered):
        store.get(package.digest)
    (package.path / "extra.py").unlink()
    (package.path / "link").symlink_to("/etc/passwd")
    with pytest.raises(PackageTampered):
        store.get(package.digest)


def test_unknown_digest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(PackageNotFound):
        PackageStore(tmp_path).get("sha256:" + "0" * 64)
    with pytest.raises(InvalidPackage):
        PackageStore(tmp_path).get("sha256:../../etc")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("/etc/cron.d/evil", tarfile.REGTYPE),
        ("../escape.py", tarfile.REGTYPE),
        ("a/../../escape.py", tarfile.REGTYPE),
        ("link", tarfile.SYMTYPE),
        ("hard", tarfile.LNKTYPE),
        ("dev", tarfile.CHRTYPE),
        ("fifo", tarfile.FIFOTYPE),
    ],
)
def test_unsafe_archive_members_are_refused(tmp_path: Path, name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/shadow"
    data = b"" if kind == tarfile.REGTYPE else None
    archive = _tar(tmp_path / "bad.tar.gz", [*_package_members(), (info, data)])
    with pytest.raises(InvalidPackage):
        PackageStore(tmp_path / "data").add(archive)
    assert not (tmp_path / "escape.py").exists()
    assert list((tmp_path / "data" / "packages").iterdir()) == []  # staging cleaned up


def test_a_symlink_in_a_folder_package_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    shutil.copytree(POOL_PACKAGE, folder)
    (folder / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidPackage, match="link"):
        PackageStore(tmp_path / "data").add(folder)


def test_size_and_entry_caps(tmp_path: Path) -> None:
    big = _tar(tmp_path / "big.tar.gz", [*_package_members(), _file("zeros", bytes(200_000))])
    with pytest.raises(InvalidPackage, match="larger than"):
        PackageStore(tmp_path / "a", limits=ExtractLimits(max_total_bytes=100_000)).add(big)
    with pytest.raises(InvalidPackage, match="larger than"):
        PackageStore(tmp_path / "b", limits=ExtractLimits(max_file_bytes=100_000)).add(big)
    with pytest.raises(InvalidPackage, match="entries"):
        PackageStore(tmp_path / "c", limits=ExtractLimits(max_entries=2)).add(big)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"version": "1", "entry_point": "m:f"}, "name"),
        ({"name": "x", "version": "1", "entry_point": "no-colon"}, "entry_point"),
        ({"name": "x", "version": "1", "entry_point": "m:f", "extra": 1}, "unknown keys"),
        ({"name": "x", "version": "1", "entry_point": "m:f", "resources": {"memory": 1}}, "unk"),
        (
            {"name": "x", "version": "1", "entry_point": "m:f", "resources": {"concurrency": 0}},
            "concurrency",
        ),
        (
            {"name": "x", "version": "1", "entry_point": "m:f", "requirements": ["--index-url"]},
            "requirements",
        ),
        (
            {"name": "x", "version": "1", "entry_point": "m:f", "requirements": ["a @ file:///"]},
            "requirements",
        ),
    ],
)
def test_bad_manifests_are_refused(manifest: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidPackage, match=message):
        Manifest.from_json(manifest)


def test_manifest_accepts_plain_requirements() -> None:
    manifest = Manifest.from_json(
        {
            "name": "x",
            "version": "1.0",
            "entry_point": "m:f",
            "requirements": ["numpy>=1.24", "scikit-learn>=1.3,<2", "tokenizers", "a[extra]==1"],
        }
    )
    assert manifest.needs_environment


def test_a_package_without_requirements_needs_no_environment(tmp_path: Path) -> None:
    package = PackageStore(tmp_path).add(POOL_PACKAGE)
    envs = Environments(tmp_path / "envs")
    assert envs.find(package).mounts == ()
    assert envs.prepare(package).mounts == ()


def test_a_package_with_requirements_must_be_prepared(tmp_path: Path) -> None:
    package = PackageStore(tmp_path).add(IRIS_PACKAGE)
    with pytest.raises(PackageNotPrepared, match="broker packages prepare"):
        Environments(tmp_path / "envs").find(package)


_ARTEFACT_MODEL = """
import base64


def prepare(payload):
    return {"artefacts": {"greeting.txt": base64.b64encode(b"prepared").decode()}}


def answer(payload):
    with open("/env/0/greeting.txt", "rb") as f:
        return {"greeting": f.read().decode()}
"""


@pytest.mark.sandbox
def test_a_tampered_environment_is_refused_at_the_next_worker_start(
    tmp_path: Path, launcher: SandboxLauncher
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    manifest = {
        "name": "artefact-reader",
        "version": "1.0.0",
        "entry_point": "reader:answer",
        "prepare": "reader:prepare",
    }
    (source / "manifest.json").write_text(json.dumps(manifest))
    (source / "reader.py").write_text(_ARTEFACT_MODEL)
    store = PackageStore(tmp_path / "data")
    package = store.add(source)
    envs = Environments(tmp_path / "envs")
    env = envs.prepare(package, run_hook=sandboxed_prepare_hook())
    violations: list[Violation] = []
    pools = WorkerPools(store, envs, on_violation=violations.append)
    try:
        assert pools.call(package.digest, "tenant-a", {}, timeout=30) == {"greeting": "prepared"}
        (env.mounts[0] / "greeting.txt").write_bytes(b"swapped")
        with pytest.raises(EnvironmentTampered) as caught:
            pools.call(package.digest, "tenant-b", {}, timeout=30)  # a new worker: checked
        assert caught.value.path == "artefacts/greeting.txt"
        assert "broker packages prepare" in caught.value.message
        with pytest.raises(EnvironmentTampered):
            pools.call(package.digest, "tenant-c", {}, timeout=30)
        # Reported to the audit hook once per change seen, not once per refused call.
        assert [(v.reason, v.package, v.tenant) for v in violations] == [
            (
                "environment tampered: artefacts/greeting.txt content changed",
                package.digest,
                "tenant-b",
            )
        ]
    finally:
        pools.close()
