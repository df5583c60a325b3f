"""The environment's digest manifest: recorded once, any later change named, checks cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.packages import env_digest
from broker.packages.env_digest import (
    EnvironmentVerifier,
    build_manifest,
    manifest_path,
    write_manifest,
)
from broker.packages.errors import EnvironmentTampered, InvalidPackage, PackageNotPrepared

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def env(tmp_path: Path) -> Path:
    """A small environment tree, recorded: files, a sub-directory and a link, like a venv."""
    root = tmp_path / ("sha256-" + "ab" * 32)
    (root / "venv" / "lib" / "site-packages" / "pkg").mkdir(parents=True)
    (root / "venv" / "lib" / "site-packages" / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "venv" / "bin").mkdir()
    (root / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "artefacts").mkdir()
    (root / "artefacts" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    write_manifest(root, build_manifest(root, DIGEST))
    return root


def _refusal(env: Path, verifier: EnvironmentVerifier | None = None) -> EnvironmentTampered:
    with pytest.raises(EnvironmentTampered) as caught:
        (verifier or EnvironmentVerifier()).verify(env, DIGEST)
    return caught.value


def test_an_untouched_environment_verifies(env: Path) -> None:
    EnvironmentVerifier().verify(env, DIGEST)
    assert manifest_path(env).parent == env.parent  # kept beside the environment, not in it
    assert not list(env.glob("*.manifest.json"))


def test_changed_content_is_refused_naming_the_file(env: Path) -> None:
    weights = env / "artefacts" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1  # same size: only the hash tells
    weights.write_bytes(bytes(data))
    with capture_logs() as logs:
        refusal = _refusal(env)
    assert refusal.path == "artefacts/weights.bin"
    assert refusal.change == "content changed"
    assert "'artefacts/weights.bin' content changed" in refusal.message
    assert "run `broker packages prepare sha256:" in refusal.message
    assert refusal.message.endswith("again")
    event = next(e for e in logs if e["event"] == "environment_tampered")
    assert event["log_level"] == "warning"
    assert event["path"] == "artefacts/weights.bin"
    assert event["package"] == DIGEST


def test_added_missing_and_relinked_entries_are_named(env: Path) -> None:
    extra = env / "venv" / "lib" / "site-packages" / "evil.pth"
    extra.write_text("import os\n")
    assert (_refusal(env).path, _refusal(env).change) == (
        "venv/lib/site-packages/evil.pth",
        "was added",
    )
    extra.unlink()
    module = env / "venv" / "lib" / "site-packages" / "pkg" / "__init__.py"
    module.rename(module.with_suffix(".bak"))
    first = _refusal(env)  # in byte order, "__init__.bak" sorts before "__init__.py"
    assert (first.path, first.change) == ("venv/lib/site-packages/pkg/__init__.bak", "was added")
    module.with_suffix(".bak").rename(module)
    link = env / "venv" / "bin" / "python"
    link.unlink()
    link.symlink_to("/tmp/evil-python")
    assert (_refusal(env).path, _refusal(env).change) == (
        "venv/bin/python",
        "points somewhere else",
    )
    link.unlink()
    assert _refusal(env).change == "is missing"


def test_a_mode_change_or_a_replaced_kind_is_refused(env: Path) -> None:
    module = env / "venv" / "lib" / "site-packages" / "pkg" / "__init__.py"
    mode = module.stat().st_mode & 0o777
    module.chmod(0o666)
    assert _refusal(env).change == f"changed mode from {mode:o} to 666"
    module.chmod(mode)
    module.unlink()
    module.symlink_to("/etc/passwd")
    assert _refusal(env).change == "was a file and is now a link"


def test_an_in_place_edit_after_a_cached_check_is_still_caught(env: Path) -> None:
    verifier = EnvironmentVerifier()
    verifier.verify(env, DIGEST)
    verifier.verify(env, DIGEST)  # cached: nothing changed
    module = env / "venv" / "lib" / "site-packages" / "pkg" / "__init__.py"
    before = module.stat()
    module.write_text("y = 2\n")  # same size; the directory's mtime does not move
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime is put back
    assert _refusal(env, verifier).path == "venv/lib/site-packages/pkg/__init__.py"


def test_each_state_is_hashed_once_per_verifier(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[Path] = []
    real = env_digest._sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(env_digest, "_sha256", counting)
    verifier = EnvironmentVerifier()
    verifier.verify(env, DIGEST)
    assert len(hashed) == 2  # the two files; the link and directories need no hashing
    verifier.verify(env, DIGEST)
    assert len(hashed) == 2  # unchanged: the lstat snapshot matched, nothing re-read
    (env / "artefacts" / "weights.bin").write_bytes(b"other")
    for _ in range(2):  # a refusal is remembered as well: repeated calls do not re-hash
        assert _refusal(env, verifier).path == "artefacts/weights.bin"
    assert len(hashed) == 2  # the size differed, so not even that file was hashed


def test_the_cache_is_dropped_when_the_manifest_changes(env: Path) -> None:
    verifier = EnvironmentVerifier()
    verifier.verify(env, DIGEST)
    manifest_path(env).write_bytes(manifest_path(env).read_bytes().replace(b'"f",', b'"d",', 1))
    assert _refusal(env, verifier).change == "was a directory and is now a file"


def test_a_manifest_for_another_package_or_garbage_is_refused(env: Path) -> None:
    other = "sha256:" + "cd" * 32
    write_manifest(env, build_manifest(env, other))
    assert _refusal(env).path == "(its manifest)"
    manifest_path(env).write_bytes(b"{not json")
    assert _refusal(env).change == "is malformed"


def test_a_missing_manifest_asks_for_prepare_again(env: Path) -> None:
    manifest_path(env).unlink()
    with capture_logs() as logs, pytest.raises(PackageNotPrepared) as caught:
        EnvironmentVerifier().verify(env, DIGEST)
    assert not isinstance(caught.value, EnvironmentTampered)
    assert "without a digest manifest" in caught.value.message
    assert f"run `broker packages prepare {DIGEST}` again" in caught.value.message
    assert [e["event"] for e in logs] == ["environment_without_manifest"]


def test_special_files_cannot_be_recorded(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidPackage, match="special file"):
        build_manifest(tmp_path, DIGEST)


def test_the_manifest_is_replaced_atomically(env: Path) -> None:
    write_manifest(env, b"new")
    assert manifest_path(env).read_bytes() == b"new"
    assert sorted(p.name for p in env.parent.iterdir()) == [env.name, manifest_path(env).name]
