"""``broker call``: call a model with a JSON payload and print the answer (or ``--preview``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format

from broker.cli.common import add_client_arguments, client_from_args


def register(sub: Any) -> None:
    """Add the ``call`` subcommand."""
    parser = sub.add_parser("call", help="call a model and print its answer")
    parser.add_argument("model", help="vendor/name@version, or vendor/name for the newest")
    parser.add_argument(
        "--payload", default="-", help="JSON file with the payload, or - for stdin (default)"
    )
    parser.add_argument("--purpose", default="", help="why the data is used (for the policy)")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="POINTER=LABEL",
        help="add a label to a field, e.g. /customer/note=confidential (repeatable)",
    )
    parser.add_argument(
        "--preview", action="store_true", help="show what the policy would do; call nothing"
    )
    add_client_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the payload, call the model (or preview), print the result as JSON."""
    data = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    labels = parse_labels(args.label)
    with client_from_args(args) as client:
        if args.preview:
            preview = client.preview(
                args.model, data, purpose=args.purpose, labels=labels, timeout=args.timeout
            )
            text = json_format.MessageToJson(preview, preserving_proto_field_name=True)
            sys.stdout.write(text + "\n")
            return 0
        answer = client.invoke(
            args.model, data, purpose=args.purpose, labels=labels, timeout=args.timeout
        )
    output = {
        "call_id": answer.call_id,
        "model": answer.model,
        "answer": answer.answer,
        "policy_revision": answer.policy_revision,
        "restored_values": answer.restored_values,
        "decisions": [
            json_format.MessageToDict(d, preserving_proto_field_name=True) for d in answer.decisions
        ],
    }
    sys.stdout.write(orjson.dumps(output, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def parse_labels(items: list[str]) -> dict[str, list[str]]:
    """``["/a=x", "/a=y", "/b=z"]`` -> ``{"/a": ["x", "y"], "/b": ["z"]}``."""
    labels: dict[str, list[str]] = {}
    for item in items:
        pointer, sep, label = item.rpartition("=")
        if not sep or not label:
            raise ValueError(
                f"--label takes POINTER=LABEL, for example /note=confidential: {item!r}"
            )
        labels.setdefault(pointer, []).append(label)
    return labels
