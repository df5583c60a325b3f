"""``broker serve`` and ``broker demo``: run a broker node."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from broker.cli.common import add_config_argument
from broker.config import load_config
from broker.logging import configure_logging


def register(sub: Any) -> None:
    """Add ``serve`` and ``demo``."""
    serve = sub.add_parser("serve", help="run a broker node until SIGTERM")
    add_config_argument(serve)
    # Set by the node's supervisor for its worker processes (broker.server.workers), not by hand.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=run_serve)

    demo = sub.add_parser(
        "demo", help="run a node with the demo setup: MLServer iris model, development issuer"
    )
    add_config_argument(demo)
    demo.add_argument(
        "--mlserver-venv",
        default=".venv-mlserver",
        help="virtual environment with MLServer (made by `make mlserver-env`)",
    )
    demo.set_defaults(handler=run_demo)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until a signal arrives: one process, or a supervisor of ``[server] workers``."""
    from broker.server import workers  # noqa: PLC0415 - keeps `broker call` light

    if args.worker:
        workers.run_worker(socket.socket(fileno=int(os.environ.pop(workers.WORKER_FD_ENV))))
        return 0
    config = load_config(args.config)
    configure_logging(config.logging.level, json_output=config.logging.json_output)
    count = config.server.worker_count
    if count > 1:
        return workers.WorkerSupervisor(config, workers=count).serve_forever()
    from broker.server.app import build_server  # noqa: PLC0415

    build_server(config).serve_forever()
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Start MLServer, the broker and the demo model, print how to call it, serve."""
    from broker.demo.setup import run_demo_node  # noqa: PLC0415 - keeps `broker call` light

    config = load_config(args.config)
    configure_logging(config.logging.level, json_output=config.logging.json_output)
    return run_demo_node(config, mlserver_venv=args.mlserver_venv)
