"""``broker token mint``: tokens from the development issuer, for the demo and local testing.

The development issuer's signing key lives under the data directory and is trusted only when
``[auth.dev_issuer] enabled = true``. It exists so that a newcomer can call the demo broker
within a minute; production brokers trust real issuers (``[[auth.issuers]]``) instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.auth.dev_issuer import DevIssuer
from broker.auth.principal import Role
from broker.cli.common import add_config_argument
from broker.config import load_config


def register(sub: Any) -> None:
    """Add ``token mint``."""
    parser = sub.add_parser("token", help="development tokens")
    actions = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    mint = actions.add_parser(
        "mint", help="mint a token from the DEVELOPMENT issuer (never use in production)"
    )
    mint.add_argument("--tenant", required=True, help="organisation the caller belongs to")
    mint.add_argument("--subject", default=None, help="caller id (default: <tenant>-cli)")
    mint.add_argument(
        "--role",
        action="append",
        required=True,
        choices=[role.value for role in Role],
        help="role to grant; repeat for several",
    )
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    add_config_argument(mint)
    mint.set_defaults(handler=run_mint)


def run_mint(args: argparse.Namespace) -> int:
    """Print a freshly minted development token."""
    config = load_config(args.config)
    issuer = DevIssuer(config.key_dir, config.auth.dev_issuer)
    subject = args.subject or f"{args.tenant}-cli"
    print(
        "warning: development issuer token; trusted only by brokers with "
        "[auth.dev_issuer] enabled = true",
        file=sys.stderr,
    )
    print(issuer.mint(subject=subject, tenant=args.tenant, roles=args.role, ttl_seconds=args.ttl))
    return 0
