"""``Environments``: prepare records a manifest; find refuses a changed or unrecorded environment.

The prepare hook is the seam where the sandbox runs vendor code; here a plain function stands in
for it (``tests/sandbox/test_packages.py`` runs the real one), and the virtualenv is real.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.packages.env_digest import manifest_path
from broker.packages.environment import Environments, PrepareOptions
from broker.packages.errors import EnvironmentTampered, PackageNotPrepared
from broker.packages.store import PackageStore, StoredPackage

GREETING = b"hello from prepare"


def _hook(package: StoredPackage, mounts: tuple[Path, ...]) -> dict[str, Any]:
    return {"artefacts": {"greeting.txt": base64.b64encode(GREETING).decode()}}


@pytest.fixture
def package(tmp_path: Path) -> StoredPackage:
    source = tmp_path / "source"
    source.mkdir()
    manifest = {
        "name": "env-probe",
        "version": "1.0.0",
        "entry_point": "probe:answer",
        "prepare": "probe:prepare",
    }
    (source / "manifest.json").write_text(json.dumps(manifest))
    (source / "probe.py").write_text(
        "def answer(p):\n    return p\n\ndef prepare(p):\n    return p\n"
    )
    return PackageStore(tmp_path / "data").add(source)


@pytest.fixture
def envs(tmp_path: Path, package: StoredPackage) -> Environments:
    envs = Environments(tmp_path / "envs")
    envs.prepare(package, run_hook=_hook)
    return envs


def test_prepare_records_a_manifest_and_an_untouched_environment_loads(
    envs: Environments, package: StoredPackage
) -> None:
    env = envs.find(package)
    assert (env.mounts[0] / "greeting.txt").read_bytes() == GREETING
    assert manifest_path(env.root).is_file()
    assert Environments(envs.root).find(package) == env  # a fresh process verifies it too


def test_a_tampered_environment_is_refused_naming_the_file(
    envs: Environments, package: StoredPackage
) -> None:
    env = envs.find(package)
    (env.mounts[0] / "greeting.txt").write_bytes(b"hello from someone else")
    with pytest.raises(EnvironmentTampered) as caught:
        envs.find(package)
    assert caught.value.path == "artefacts/greeting.txt"
    assert caught.value.code.name == "FAILED_PRECONDITION"
    assert f"run `broker packages prepare {package.digest}` again" in caught.value.message


def test_a_module_dropped_into_site_packages_is_refused(
    envs: Environments, package: StoredPackage
) -> None:
    site = envs.find(package).mounts[1]
    (site / "sitecustomize.py").write_text("import os\n")
    with pytest.raises(EnvironmentTampered, match=r"sitecustomize\.py' was added"):
        envs.find(package)


def test_prepare_rebuilds_a_tampered_environment(
    envs: Environments, package: StoredPackage
) -> None:
    env = envs.find(package)
    (env.mounts[0] / "greeting.txt").write_bytes(b"changed")
    lines: list[str] = []
    with capture_logs() as logs:
        rebuilt = envs.prepare(package, run_hook=_hook, progress=lines.append)
    assert (rebuilt.mounts[0] / "greeting.txt").read_bytes() == GREETING
    assert any("rebuilding" in line and "greeting.txt" in line for line in lines)
    assert "environment_tampered" in [e["event"] for e in logs]  # repaired, but still seen
    envs.find(package)


def test_an_environment_without_a_manifest_must_be_prepared_again(
    envs: Environments, package: StoredPackage
) -> None:
    root = envs.find(package).root
    manifest_path(root).unlink()  # as an environment built by an older broker
    with pytest.raises(PackageNotPrepared, match="without a digest manifest") as caught:
        Environments(envs.root).find(package)
    assert f"run `broker packages prepare {package.digest}` again" in caught.value.message
    lines: list[str] = []
    envs.prepare(package, run_hook=_hook, progress=lines.append)
    assert any("rebuilding" in line for line in lines)
    assert manifest_path(root).is_file()
    Environments(envs.root).find(package)


def test_a_forced_rebuild_replaces_the_manifest(envs: Environments, package: StoredPackage) -> None:
    before = manifest_path(envs.find(package).root).read_bytes()
    envs.prepare(package, run_hook=_hook, options=PrepareOptions(force=True))
    after = manifest_path(envs.find(package).root).read_bytes()
    assert after != before  # the marker's build time differs, so the manifest does too
    assert sorted(p.name for p in envs.root.iterdir()) == sorted(
        [envs.find(package).root.name, manifest_path(envs.find(package).root).name]
    )
