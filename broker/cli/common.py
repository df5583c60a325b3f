"""Pieces shared by the client-side subcommands: target, token and client construction."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from broker.client import BrokerClient

DEFAULT_TARGET = "127.0.0.1:50051"


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--token``/``--token-file`` and TLS options."""
    parser.add_argument(
        "--target",
        default=os.environ.get("BROKER_TARGET", DEFAULT_TARGET),
        help=f"broker address (env BROKER_TARGET, default {DEFAULT_TARGET})",
    )
    parser.add_argument("--token", default=None, help="bearer token (default: env BROKER_TOKEN)")
    parser.add_argument("--token-file", type=Path, default=None, help="read the token from a file")
    add_tls_arguments(parser)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ca`` (connect with TLS) and ``--cert``/``--key`` (mutual TLS)."""
    parser.add_argument("--ca", type=Path, default=None, help="CA bundle: connect with TLS")
    parser.add_argument("--cert", type=Path, default=None, help="client certificate (mTLS)")
    parser.add_argument("--key", type=Path, default=None, help="client private key (mTLS)")


def token_from_args(args: argparse.Namespace) -> str:
    """The bearer token from ``--token``, ``--token-file`` or BROKER_TOKEN; ValueError if none."""
    token = args.token or os.environ.get("BROKER_TOKEN")
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(
            "no token: pass --token, --token-file or set BROKER_TOKEN "
            "(for the demo: export BROKER_TOKEN=$(broker token mint --tenant acme --role buyer))"
        )
    return str(token)


def channel_from_args(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``--target``: TLS when ``--ca`` is given (mutual with ``--cert/--key``)."""
    if args.ca is None:
        return grpc.insecure_channel(args.target)
    key, cert = (
        (args.key.read_bytes(), args.cert.read_bytes())
        if args.cert and args.key
        else (
            None,
            None,
        )
    )
    credentials = grpc.ssl_channel_credentials(args.ca.read_bytes(), key, cert)
    return grpc.secure_channel(args.target, credentials)


def client_from_args(args: argparse.Namespace) -> BrokerClient:
    """A client configured from the common arguments; ValueError if no token is available."""
    token = token_from_args(args)
    return BrokerClient(args.target, token=token, channel=channel_from_args(args))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, for the commands that read the broker's own configuration."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: built-in defaults, overridden by BROKER__* variables)",
    )
