"""Prepared environments: a package's Python requirements and artefacts, built once, before calls.

``prepare`` never runs at call time. It builds, under ``<envs_root>/sha256-<hex>/``:

- ``venv/``: ``python -m venv`` plus ``pip install`` of the manifest's requirements, wheels only
  by default (a source build runs the vendor's ``setup.py`` as the broker, outside the sandbox;
  ``unsafe_source_builds=True`` allows it, by name). pip's own cache is used unless told
  otherwise, so a second node or a re-prepare reuses downloaded wheels;
- ``artefacts/``: what the manifest's ``prepare`` hook returned. The hook is vendor code, so it
  runs **inside a sandbox worker** like any call (with the new site-packages bound in) and sends
  its artefacts back as ``{"artefacts": {"relative/path": "<base64>"}}``; the broker writes them.

Everything is built in a staging directory and renamed into place with a ``prepared.json``
marker, so a half-built environment is never used. Workers see the artefacts at
``/env/0`` (:data:`broker.packages.manifest.ARTEFACTS_MOUNT`) and site-packages at ``/env/1``,
both read-only.

``prepare`` also records a digest manifest of what it built, beside the environment
(:mod:`broker.packages.env_digest`), and ``find`` (called at every worker start) checks the
environment against it: hashed in full once per ``Environments`` object (the broker keeps one
per process), then a cheap ``lstat`` comparison at each later start that re-hashes only when
something changed. A mismatch raises :class:`EnvironmentTampered` naming the first differing
file. An environment without a manifest (built by an older broker) is treated as not prepared:
``prepare`` rebuilds it, as it rebuilds a tampered one, instead of trusting what is on disk.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from broker.packages.archive import ExtractLimits, remove_tree, safe_relative
from broker.packages.digest import dir_name
from broker.packages.env_digest import (
    EnvironmentVerifier,
    build_manifest,
    discard_manifest,
    write_manifest,
)
from broker.packages.errors import InvalidPackage, PackageNotPrepared
from broker.packages.store import StoredPackage

MARKER = "prepared.json"
PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"

Progress = Callable[[str], None]
HookRunner = Callable[[StoredPackage, tuple[Path, ...]], dict[str, Any]]
"""Runs the package's prepare hook in a sandbox with these env dirs and returns its answer."""


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    """How ``prepare`` installs requirements."""

    pip_cache_dir: Path | None = None  # None: pip's default cache (reused between prepares)
    find_links: tuple[Path, ...] = ()  # local wheel folders, for offline nodes
    no_index: bool = False
    unsafe_source_builds: bool = False
    force: bool = False  # rebuild even when a prepared environment exists


@dataclass(frozen=True, slots=True)
class Environment:
    """A prepared environment; ``mounts`` is what the launcher binds, in order."""

    root: Path
    mounts: tuple[Path, ...]


class Environments:
    """Builds and finds prepared environments under ``envs_root`` (one per package digest)."""

    def __init__(self, envs_root: Path) -> None:
        self.root = Path(envs_root)
        self._verifier = EnvironmentVerifier()

    def find(self, package: StoredPackage) -> Environment:
        """The package's prepared environment, checked against its manifest (empty if none needed).

        Raises :class:`PackageNotPrepared` (or its :class:`EnvironmentTampered`) when it is
        missing, from an older broker, or changed on disk since ``prepare``.
        """
        if not package.manifest.needs_environment:
            return Environment(root=self.root, mounts=())
        root = self.root / dir_name(package.digest)
        try:
            marker = orjson.loads((root / MARKER).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raise PackageNotPrepared(package.digest) from None
        if marker.get("digest") != package.digest or marker.get("python") != PYTHON_TAG:
            raise PackageNotPrepared(package.digest)
        self._verifier.verify(root, package.digest)
        return Environment(root=root, mounts=_mounts(root))

    def prepare(
        self,
        package: StoredPackage,
        *,
        run_hook: HookRunner | None = None,
        options: PrepareOptions | None = None,
        progress: Progress = lambda line: None,
    ) -> Environment:
        """Build the environment once; a no-op when it exists (unless ``options.force``)."""
        options = options or PrepareOptions()
        if not package.manifest.needs_environment:
            progress(f"{package.manifest.name}: no requirements and no prepare step; nothing to do")
            return self.find(package)
        if not options.force:
            try:
                return self.find(package)
            except PackageNotPrepared as exc:
                if exc.why != PackageNotPrepared.NEVER_BUILT:
                    progress(f"rebuilding: model package {package.digest} {exc.why}")
        if package.manifest.prepare and run_hook is None:
            raise InvalidPackage("this package has a prepare step, which needs a sandbox runner")
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=self.root))
        staging.chmod(0o755)
        try:
            started = time.monotonic()
            _build_venv(staging, package, options, progress)
            (staging / "artefacts").mkdir(mode=0o755)
            if package.manifest.prepare and run_hook is not None:
                progress(f"[3/3] running the prepare step {package.manifest.prepare} in a sandbox")
                answer = run_hook(package, _mounts(staging))
                _write_artefacts(staging / "artefacts", answer, progress)
            marker = {"digest": package.digest, "python": PYTHON_TAG, "built": time.time()}
            (staging / MARKER).write_bytes(orjson.dumps(marker))
            manifest = build_manifest(staging, package.digest)
            final = self.root / dir_name(package.digest)
            discard_manifest(final)
            remove_tree(final)
            staging.rename(final)
            write_manifest(final, manifest)
            progress(f"prepared {package.digest} in {time.monotonic() - started:.1f} s")
        finally:
            remove_tree(staging)
        return self.find(package)


def _mounts(root: Path) -> tuple[Path, ...]:
    site = root / "venv" / "lib" / f"python{PYTHON_TAG}" / "site-packages"
    return (root / "artefacts", site)


def _build_venv(
    staging: Path, package: StoredPackage, options: PrepareOptions, progress: Progress
) -> None:
    venv = staging / "venv"
    progress(f"[1/3] creating a virtualenv for {package.manifest.name} {package.manifest.version}")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], progress)
    (venv / "lib" / f"python{PYTHON_TAG}" / "site-packages").mkdir(parents=True, exist_ok=True)
    requirements = package.manifest.requirements
    if not requirements:
        return
    progress(f"[2/3] installing {len(requirements)} requirement(s): {', '.join(requirements)}")
    command = [
        sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
        "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
    ]  # fmt: skip
    if not options.unsafe_source_builds:
        command.append("--only-binary=:all:")
    if options.pip_cache_dir is not None:
        command += ["--cache-dir", str(options.pip_cache_dir)]
    for folder in options.find_links:
        command += ["--find-links", str(folder)]
    if options.no_index:
        command.append("--no-index")
    _run([*command, "--", *requirements], progress)


def _run(command: list[str], progress: Progress) -> None:
    """Run a build step, streaming its output lines to ``progress``; raise on failure."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "PATH", "HOME", "LANG"))}
    with subprocess.Popen(  # noqa: S603 - our interpreter and pip, arguments from a checked manifest
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    ) as process:
        assert process.stdout is not None  # stdout=PIPE guarantees it
        tail: list[str] = []
        for raw in process.stdout:
            line = raw.rstrip()
            if line:
                progress("    " + line)
                tail = [*tail[-19:], line]
    if process.returncode != 0:
        raise InvalidPackage(
            f"preparing the environment failed ({command[2]} exited {process.returncode}): "
            + " | ".join(tail[-3:])
        )


def _write_artefacts(target: Path, answer: dict[str, Any], progress: Progress) -> None:
    """Write the hook's ``{"artefacts": {path: base64}}`` under ``target``, paths checked."""
    artefacts = answer.get("artefacts")
    if not isinstance(artefacts, dict):
        raise InvalidPackage('the prepare step must return {"artefacts": {path: base64, ...}}')
    limits = ExtractLimits()
    for name, encoded in artefacts.items():
        rel = safe_relative(str(name), limits.max_path_chars)
        try:
            data = base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            raise InvalidPackage(f"prepare artefact {str(rel)!r} is not base64") from None
        path = target / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)
        progress(f"    wrote artefact {rel} ({len(data)} bytes)")
