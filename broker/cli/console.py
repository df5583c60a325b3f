"""``broker console``: the compliance console, a web view of the audit trail."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.cli.common import add_config_argument
from broker.config import load_config
from broker.logging import configure_logging


def register(sub: Any) -> None:
    """Add ``console``."""
    parser = sub.add_parser(
        "console", help="serve the compliance console (sign in with a compliance or admin token)"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--listen", default=None, help="host:port (default: console.listen or 127.0.0.1:8080)"
    )
    parser.add_argument(
        "--broker", default=None, help="the broker's gRPC address (default: server.listen)"
    )
    parser.set_defaults(handler=run_console)


def run_console(args: argparse.Namespace) -> int:
    """Serve the console until Ctrl-C or SIGTERM."""
    from broker.console.serve import build_console_server  # noqa: PLC0415 - keeps the CLI light

    config = load_config(args.config)
    configure_logging(config.logging.level, json_output=config.logging.json_output)
    server = build_console_server(config, listen=args.listen, broker_target=args.broker)
    print(f"compliance console at {server.url} (broker {config.server.listen})", file=sys.stderr)
    try:
        server.serve()
    finally:
        server.stop()
    return 0
