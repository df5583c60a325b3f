"""``broker retention``: retained records over gRPC, and key operations run beside a node.

Client commands (talk to a running broker; token from --token/--token-file/BROKER_TOKEN):

    broker retention get RECORD_ID [--out FILE]              buyer: read an own record
    broker retention list [--tenant T|*] [--subject S]       compliance/admin: metadata, pending
    broker retention hold (--record ID | --tenant T) --reason TEXT
    broker retention release (--record ID | --tenant T) [--reason TEXT]
    broker retention erase [--tenant T] [--subject S] --reason TEXT

Operator commands (read the broker's config and open its database and root key directly;
they are safe to run while replicas serve):

    broker retention generate-root-key --out FILE            new root key, mode 0600, no overwrite
    broker retention check --config FILE                     root key right? every tenant key sound?
    broker retention rotate --config FILE (--tenant T | --all)
    broker retention rewrap --config FILE [--tenant T] [--destroy-old-versions]
    broker retention rotate-root --config FILE --new-root-key-file FILE
    broker retention run-once --config FILE                  delete everything due now
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from broker._proto.broker.v1 import retention_pb2, retention_pb2_grpc
from broker.cli.common import (
    add_client_arguments,
    add_config_argument,
    channel_from_args,
    token_from_args,
)
from broker.config import ConfigError, load_config


def register(sub: Any) -> None:
    """Add ``retention get|list|hold|release|erase|generate-root-key|check|rotate|...``."""
    parser = sub.add_parser("retention", help="retained records, holds, erasure, key rotation")
    actions = parser.add_subparsers(dest="retention_command", required=True, metavar="ACTION")

    get = actions.add_parser("get", help="read one of your retained records (buyer)")
    get.add_argument("record_id")
    get.add_argument("--out", type=Path, default=None, help="write the payload here")
    _client(get, run_get)

    listing = actions.add_parser("list", help="list records and pending deletions (compliance)")
    listing.add_argument("--tenant", default="", help="another tenant, or * for all (admin)")
    listing.add_argument("--subject", default="")
    listing.add_argument("--call-id", default="")
    _client(listing, run_list)

    for name, handler in (("hold", run_hold), ("release", run_release)):
        cmd = actions.add_parser(name, help=f"{name} a legal hold on a record or a tenant")
        target = cmd.add_mutually_exclusive_group(required=True)
        target.add_argument("--record", default=None, help="record id")
        target.add_argument("--tenant", default=None, help="every record of this tenant")
        cmd.add_argument("--reason", default="", required=name == "hold")
        _client(cmd, handler)

    erase = actions.add_parser("erase", help="destroy a tenant's or a subject's records now")
    erase.add_argument("--tenant", default="", help="another tenant (admin)")
    erase.add_argument("--subject", default="", help="only this subject's records")
    erase.add_argument("--reason", required=True, help="request reference, for the audit log")
    _client(erase, run_erase)

    gen = actions.add_parser("generate-root-key", help="write a new root key file (mode 0600)")
    gen.add_argument("--out", type=Path, required=True)
    gen.set_defaults(handler=run_generate)

    check = actions.add_parser("check", help="verify the root key and every tenant key")
    _operator(check, run_check)
    rotate = actions.add_parser("rotate", help="add a new key version for tenants")
    who = rotate.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", default=None)
    who.add_argument("--all", action="store_true", help="every tenant with a key")
    _operator(rotate, run_rotate)
    rewrap = actions.add_parser("rewrap", help="move records to their tenant's current key")
    rewrap.add_argument("--tenant", default=None, help="default: every tenant")
    rewrap.add_argument(
        "--destroy-old-versions",
        action="store_true",
        help="then delete key versions no record uses",
    )
    _operator(rewrap, run_rewrap)
    root = actions.add_parser("rotate-root", help="re-wrap every tenant key under a new root key")
    root.add_argument("--new-root-key-file", type=Path, required=True)
    _operator(root, run_rotate_root)
    once = actions.add_parser("run-once", help="delete every record due now, then exit")
    _operator(once, run_once)


def _client(parser: argparse.ArgumentParser, handler: Any) -> None:
    add_client_arguments(parser)
    parser.set_defaults(handler=handler)


def _operator(parser: argparse.ArgumentParser, handler: Any) -> None:
    add_config_argument(parser)
    parser.set_defaults(handler=handler)


@contextmanager
def _stub(args: argparse.Namespace) -> Iterator[tuple[retention_pb2_grpc.RetentionStub, Any]]:
    token = token_from_args(args)
    channel = channel_from_args(args)
    try:
        yield (
            retention_pb2_grpc.RetentionStub(channel),
            {
                "timeout": args.timeout,
                "metadata": (("authorization", f"Bearer {token}"),),
            },
        )
    finally:
        channel.close()


def run_get(args: argparse.Namespace) -> int:
    """Print the record's metadata as JSON; the payload to --out or stdout."""
    with _stub(args) as (stub, opts):
        got = stub.GetRecord(retention_pb2.GetRecordRequest(record_id=args.record_id), **opts)
    _print_json(got.record, stream=sys.stderr if args.out is None else sys.stdout)
    if args.out is not None:
        args.out.write_bytes(got.payload)
    else:
        sys.stdout.buffer.write(got.payload + b"\n")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print every matching record as JSON lines, following pages."""
    request = retention_pb2.ListRecordsRequest(
        tenant=args.tenant, subject=args.subject, call_id=args.call_id, page_size=500
    )
    with _stub(args) as (stub, opts):
        while True:
            page = stub.ListRecords(request, **opts)
            for record in page.records:
                _print_json(record)
            if not page.next_page_token:
                return 0
            request.page_token = page.next_page_token


def _target(args: argparse.Namespace) -> retention_pb2.HoldTarget:
    if args.record is not None:
        return retention_pb2.HoldTarget(record_id=args.record)
    return retention_pb2.HoldTarget(tenant=args.tenant)


def run_hold(args: argparse.Namespace) -> int:
    """Place a hold and print the result."""
    with _stub(args) as (stub, opts):
        _print_json(
            stub.Hold(retention_pb2.HoldRequest(target=_target(args), reason=args.reason), **opts)
        )
    return 0


def run_release(args: argparse.Namespace) -> int:
    """Lift a hold and print the result."""
    request = retention_pb2.ReleaseRequest(target=_target(args), reason=args.reason)
    with _stub(args) as (stub, opts):
        _print_json(stub.Release(request, **opts))
    return 0


def run_erase(args: argparse.Namespace) -> int:
    """Order an erasure and print the counts."""
    request = retention_pb2.EraseRequest(
        tenant=args.tenant, subject=args.subject, reason=args.reason
    )
    with _stub(args) as (stub, opts):
        _print_json(stub.Erase(request, **opts))
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """Write a fresh root key; refuses to overwrite an existing file."""
    from broker.retention.rootkey import generate_root_key_file  # noqa: PLC0415

    try:
        generate_root_key_file(args.out)
    except FileExistsError:
        raise ValueError(f"{args.out} exists; a root key is never overwritten") from None
    print(f"wrote a new retention root key to {args.out} (mode 0600); keep a copy offline")
    return 0


@contextmanager
def _retention(args: argparse.Namespace) -> Iterator[Any]:
    from broker.retention.setup import open_retention  # noqa: PLC0415
    from broker.storage.db import create_engine_for, migrate  # noqa: PLC0415

    config = load_config(args.config)
    engine = create_engine_for(config.database_url)
    try:
        if config.database.auto_migrate:
            migrate(engine)
        retention = open_retention(config, engine)
        if retention is None:
            raise ConfigError("retention is not configured: set a [retention] root key")
        try:
            yield retention
        finally:
            retention.close()
    finally:
        engine.dispose()


def run_check(args: argparse.Namespace) -> int:
    """Open the keyring (refusing a wrong root key) and unwrap every tenant key."""
    with _retention(args) as retention:
        count = retention.keyring.verify_all()
        print(f"root key {retention.keyring.root_key_id} opens all {count} tenant key versions")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    """Add a key version for one tenant or all; new records use it at once."""
    with _retention(args) as retention:
        tenants = retention.keyring.tenants() if args.all else [args.tenant]
        for tenant in tenants:
            print(f"{tenant}: now kek/{tenant}/v{retention.keyring.rotate(tenant)}")
    return 0


def run_rewrap(args: argparse.Namespace) -> int:
    """Re-wrap data keys under the current versions; optionally destroy unused old versions."""
    with _retention(args) as retention:
        tenants = [args.tenant] if args.tenant else retention.keyring.tenants()
        for tenant in tenants:
            moved = retention.store.rewrap(tenant)
            line = f"{tenant}: {moved} records re-wrapped"
            if args.destroy_old_versions:
                gone = retention.keyring.destroy_unused_versions(tenant)
                line += f", destroyed versions {gone or 'none'}"
            print(line)
    return 0


def run_rotate_root(args: argparse.Namespace) -> int:
    """Re-wrap every tenant key under the root key in the new file (then switch the config)."""
    from broker.retention.keyring import LocalKeyWrapper  # noqa: PLC0415
    from broker.retention.rootkey import decode_root_key  # noqa: PLC0415

    new_key = decode_root_key(
        args.new_root_key_file.read_text(encoding="ascii"), source=str(args.new_root_key_file)
    )
    with _retention(args) as retention:
        count = retention.keyring.rewrap_root(LocalKeyWrapper(new_key))
    print(
        f"{count} tenant key versions now wrapped by the new root key; point "
        "retention.root_key_file at it and restart every replica"
    )
    return 0


def run_once(args: argparse.Namespace) -> int:
    """Delete every record due now (what each broker's scheduler does periodically)."""
    with _retention(args) as retention:
        print(f"{retention.scheduler.run_once()} records destroyed")
    return 0


def _print_json(message: Any, stream: Any = None) -> None:
    text = json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)
    (stream or sys.stdout).write(text + "\n")
