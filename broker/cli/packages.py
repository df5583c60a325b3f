"""``broker packages add|prepare|list``: store vendors' model packages and build their environments.

These run on the broker node itself (they touch ``<data_dir>``), not through the API:

    broker packages add PATH        store a folder or .tar.gz; prints its digest for registration
    broker packages prepare DIGEST  build its virtualenv and artefacts once (needs the sandbox
                                    when the package has a prepare step); shows progress
    broker packages list            every stored package, verified, and whether it is prepared
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from broker.cli.common import add_config_argument
from broker.config import load_config
from broker.errors import BrokerError
from broker.packages.environment import Environments, PrepareOptions
from broker.packages.errors import PackageNotPrepared
from broker.packages.store import PackageStore
from broker.runtimes.sandbox.runtime import sandboxed_prepare_hook


def register(sub: Any) -> None:
    """Add ``packages add|prepare|list``."""
    parser = sub.add_parser("packages", help="store model packages and prepare their environments")
    actions = parser.add_subparsers(dest="packages_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="store a package (folder or .tar.gz), print its digest")
    add.add_argument("path", type=Path, help="package folder or .tar.gz with manifest.json")
    add.add_argument("--prepare", action="store_true", help="prepare its environment right away")
    _add_prepare_arguments(add)
    add_config_argument(add)
    add.set_defaults(handler=run_add)

    prep = actions.add_parser("prepare", help="build a stored package's environment (once)")
    prep.add_argument("digest", help="sha256:<hex> as printed by `broker packages add`")
    prep.add_argument("--force", action="store_true", help="rebuild an existing environment")
    _add_prepare_arguments(prep)
    add_config_argument(prep)
    prep.set_defaults(handler=run_prepare)

    listing = actions.add_parser("list", help="stored packages and whether they are prepared")
    add_config_argument(listing)
    listing.set_defaults(handler=run_list)


def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pip-cache-dir", type=Path, help="pip's wheel cache (default: pip's)")
    parser.add_argument("--find-links", type=Path, action="append", default=[], help="wheel dir")
    parser.add_argument("--no-index", action="store_true", help="install from --find-links only")
    parser.add_argument(
        "--unsafe-source-builds",
        action="store_true",
        help="allow sdists (runs their build code as this user, outside the sandbox)",
    )


def _stores(args: argparse.Namespace) -> tuple[PackageStore, Environments]:
    config = load_config(args.config)
    return PackageStore(config.data_dir), Environments(config.data_dir / "envs")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _prepare(args: argparse.Namespace, digest: str, *, force: bool) -> int:
    store, envs = _stores(args)
    package = store.get(digest)
    if args.unsafe_source_builds:
        _progress("warning: --unsafe-source-builds runs package build code outside the sandbox")
    options = PrepareOptions(
        pip_cache_dir=args.pip_cache_dir,
        find_links=tuple(args.find_links),
        no_index=args.no_index,
        unsafe_source_builds=args.unsafe_source_builds,
        force=force,
    )
    run_hook = sandboxed_prepare_hook() if package.manifest.prepare else None
    env = envs.prepare(package, run_hook=run_hook, options=options, progress=_progress)
    print(env.root if env.mounts else "(no environment needed)")
    return 0


def run_add(args: argparse.Namespace) -> int:
    """Store the package and print its digest (and prepare it with --prepare)."""
    store, _ = _stores(args)
    try:
        package = store.add(args.path)
    except BrokerError as exc:
        print(f"broker: {exc.message}", file=sys.stderr)
        return 1
    print(package.digest)
    _progress(f"stored {package.manifest.name} {package.manifest.version} at {package.path}")
    if args.prepare:
        return _prepare(args, package.digest, force=False)
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Build the environment of a stored package."""
    try:
        return _prepare(args, args.digest, force=args.force)
    except BrokerError as exc:
        print(f"broker: {exc.message}", file=sys.stderr)
        return 1


def run_list(args: argparse.Namespace) -> int:
    """One line per package: digest, name, version, prepared or not."""
    store, envs = _stores(args)
    try:
        packages = store.list()
    except BrokerError as exc:
        print(f"broker: {exc.message}", file=sys.stderr)
        return 1
    for package in packages:
        try:
            envs.find(package)
            state = "ready"
        except PackageNotPrepared:
            state = "needs prepare"
        manifest = package.manifest
        print(f"{package.digest}  {manifest.name} {manifest.version}  {state}")
    return 0
