"""``broker models``: browse the catalogue (buyers) and manage model versions (vendors)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format

from broker._proto.broker.v1 import models_pb2
from broker.cli.common import add_client_arguments, client_from_args
from broker.registry.convert import pricing_from_proto


def register(sub: Any) -> None:
    """Add ``models list|mine|register|retire``."""
    parser = sub.add_parser("models", help="browse and manage models")
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the catalogue of listed models (any role)")
    listing.add_argument("--vendor", default="", help="only this vendor's models")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    add_client_arguments(listing)
    listing.set_defaults(handler=run_list)

    mine = actions.add_parser("mine", help="your own model versions in every status (vendor)")
    mine.add_argument("--vendor", default="", help="another vendor's models (admin only)")
    add_client_arguments(mine)
    mine.set_defaults(handler=run_mine)

    reg = actions.add_parser("register", help="register a model version from a JSON file")
    reg.add_argument("file", type=Path, help="model description (broker.v1.Model as JSON)")
    add_client_arguments(reg)
    reg.set_defaults(handler=run_register)

    retire = actions.add_parser("retire", help="retire a model version (final)")
    retire.add_argument("ref", help="vendor/name@version")
    add_client_arguments(retire)
    retire.set_defaults(handler=run_retire)


def load_model_file(path: Path) -> models_pb2.Model:
    """Parse a model description file (the JSON form of ``broker.v1.Model``)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    try:
        return json_format.ParseDict(raw, models_pb2.Model())
    except json_format.ParseError as exc:
        raise ValueError(f"{path} does not describe a broker.v1.Model: {exc}") from None


def run_list(args: argparse.Namespace) -> int:
    """Print the catalogue, one model per line (or JSON lines with --json)."""
    with client_from_args(args) as client:
        for model in client.list_models(vendor=args.vendor, timeout=args.timeout):
            if args.json:
                _print_json(model)
            else:
                labels = ", ".join(model.labels) or "-"
                price = pricing_from_proto(model.pricing).describe()
                print(f"{model.ref}\t{model.description}\tlabels: {labels}\tprice: {price}")
    return 0


def run_mine(args: argparse.Namespace) -> int:
    """Print the caller's own model versions as JSON lines."""
    with client_from_args(args) as client:
        for model in client.vendor_models(vendor=args.vendor, timeout=args.timeout):
            _print_json(model)
    return 0


def run_register(args: argparse.Namespace) -> int:
    """Register the model version described in the file and print it as stored."""
    model = load_model_file(args.file)
    with client_from_args(args) as client:
        _print_json(client.register_model(model, timeout=args.timeout))
    return 0


def run_retire(args: argparse.Namespace) -> int:
    """Retire a model version and print it as stored."""
    with client_from_args(args) as client:
        _print_json(client.retire_model(args.ref, timeout=args.timeout))
    return 0


def _print_json(message: Any) -> None:
    text = json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)
    sys.stdout.write(text + "\n")
