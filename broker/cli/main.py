"""``broker``: one command for operators, vendors, buyers and security teams.

    broker serve [--config FILE]            run a broker node
    broker demo  [--config FILE]            run a node with MLServer and a demo model
    broker call MODEL [--payload FILE|-]    call a model, print the answer
    broker models list|mine|register|retire manage and browse models
    broker token mint --tenant T --role R   mint a development token (dev issuer only)
    broker health                           health check and service list of a running broker
    broker policy test|eval                 test a policy bundle; print the plan for an input
    broker packages add|prepare|list        store and prepare sandbox model packages (on the node)
    broker retention get|list|hold|release|erase|rotate|...   retained records and their keys
    broker audit query|export|tail|prove|verify|verify-receipt   the tamper-evident audit log
    broker usage report --month YYYY-MM [--tenant T | --vendor V] [--format csv]   invoices
    broker console [--listen HOST:PORT]     the compliance console, a web view of the audit log
    broker cluster up|down|status           a demo cluster: replicas behind HAProxy

Errors are printed as one line that says what to do, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from broker.cli import (
    audit,
    calls,
    console,
    health,
    models,
    packages,
    policy,
    retention,
    serve,
    tokens,
    usage,
)
from broker.cluster import cli as cluster
from broker.config import ConfigError
from broker.errors import BrokerError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="broker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    calls.register(sub)
    models.register(sub)
    tokens.register(sub)
    health.register(sub)
    policy.register(sub)
    packages.register(sub)
    retention.register(sub)
    audit.register(sub)
    usage.register(sub)
    console.register(sub)
    cluster.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except ConfigError as exc:
        print(f"broker: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"broker: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        code = exc.code().name
        print(f"broker: {code}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
