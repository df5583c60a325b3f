"""``broker call``: call a model with a JSON payload and print the answer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from broker.cli.common import add_client_arguments, client_from_args


def register(sub: Any) -> None:
    """Add the ``call`` subcommand."""
    parser = sub.add_parser("call", help="call a model and print its answer")
    parser.add_argument("model", help="vendor/name@version, or vendor/name for the newest")
    parser.add_argument(
        "--payload", default="-", help="JSON file with the payload, or - for stdin (default)"
    )
    add_client_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the payload, call the model, print the answer as JSON."""
    data = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    with client_from_args(args) as client:
        answer = client.invoke(args.model, data, timeout=args.timeout)
    output = {"call_id": answer.call_id, "model": answer.model, "answer": answer.answer}
    sys.stdout.write(orjson.dumps(output, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
