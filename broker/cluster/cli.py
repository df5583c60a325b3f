"""``broker cluster up | down | status``: a demo cluster on this machine (see README, "Running
several replicas").

``up`` starts the replicas, HAProxy, MLServer with the iris model, registers the model through
the balancer, prints how to call it and returns; the processes keep running. ``down`` stops
every process the state file names, also after ``up`` crashed half-way. ``status`` lists each
process, its pid and its health (and whether the balancer has it in rotation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cluster.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_FRONT,
    DEFAULT_REPLICA_PORT,
    DEFAULT_ROOT,
    ClusterError,
    ClusterSettings,
)

if TYPE_CHECKING:
    from broker.cluster.launcher import Cluster


def register(sub: Any) -> None:
    """Add ``cluster up|down|status``."""
    parser = sub.add_parser("cluster", help="a demo cluster: replicas on PostgreSQL behind HAProxy")
    actions = parser.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start replicas, HAProxy and MLServer; register iris")
    up.add_argument("--replicas", type=int, default=3, help="broker replicas (default 3)")
    up.add_argument(
        "--workers", type=int, default=1, help="broker processes per replica (default 1)"
    )
    up.add_argument("--front", default=DEFAULT_FRONT, help=f"balancer address ({DEFAULT_FRONT})")
    up.add_argument(
        "--replica-port",
        type=int,
        default=DEFAULT_REPLICA_PORT,
        help=f"first replica's port, the others follow (default {DEFAULT_REPLICA_PORT})",
    )
    up.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL database, created if missing (default: broker_cluster on 127.0.0.1)",
    )
    up.add_argument(
        "--mlserver-venv",
        type=Path,
        default=Path(".venv-mlserver"),
        help="virtual environment with MLServer (`make mlserver-env`)",
    )
    for action in (up, actions.add_parser("down", help="stop everything `up` started")):
        action.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="cluster directory")
    status = actions.add_parser("status", help="each process, its pid and health")
    status.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="cluster directory")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to up, down or status."""
    from broker.cluster.launcher import Cluster  # noqa: PLC0415 - keeps `broker call` light

    try:
        if args.cluster_command == "up":
            return _up(args)
        cluster = Cluster(ClusterSettings(root=args.root), say=_say)
        if args.cluster_command == "down":
            cluster.stop()
            _say("stopped")
            return 0
        return _status(cluster)
    except ClusterError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    from broker.cluster.launcher import Child, Cluster  # noqa: PLC0415
    from broker.demo.mlserver import start_mlserver  # noqa: PLC0415

    settings = ClusterSettings(
        root=args.root,
        replicas=args.replicas,
        workers=args.workers,
        front=args.front,
        replica_port=args.replica_port,
        database_url=args.database_url,
    )
    if not (args.mlserver_venv / "bin" / "mlserver").exists():
        raise ClusterError(f"no MLServer at {args.mlserver_venv}: run `make mlserver-env` first")
    cluster = Cluster(settings, say=_say)
    cluster.start()
    try:
        _say("starting MLServer with the iris demo model")
        mlserver = start_mlserver(args.mlserver_venv, settings.root / "mlserver")
        cluster.adopt(
            Child(
                "mlserver",
                mlserver.process.pid,
                _started(mlserver.process.pid),
                mlserver.log_path,
                mlserver.grpc_port,
            )
        )
        ref = register_demo_model(settings, mlserver.grpc_target)
    except BaseException:
        cluster.stop()
        raise
    _say(f"model {ref} is served by MLServer at {mlserver.grpc_target}")
    _say(_quickstart(settings, ref))
    return 0


def _started(pid: int) -> int:
    from broker.cluster.launcher import start_time  # noqa: PLC0415

    started = start_time(pid)
    if started is None:
        raise ClusterError(f"process {pid} exited at once")
    return started


def register_demo_model(settings: ClusterSettings, grpc_target: str) -> str:
    """Register ``demo-vendor/iris@1.0.0`` through the balancer, or repoint it at this run's
    MLServer; its ref."""
    import grpc  # noqa: PLC0415
    from google.protobuf import field_mask_pb2  # noqa: PLC0415

    from broker._proto.broker.v1 import registry_pb2  # noqa: PLC0415
    from broker.auth.dev_issuer import DevIssuer  # noqa: PLC0415
    from broker.client import BrokerClient  # noqa: PLC0415
    from broker.config import DevIssuerConfig  # noqa: PLC0415
    from broker.demo.setup import DEMO_VENDOR, demo_model  # noqa: PLC0415
    from broker.registry.convert import model_to_proto  # noqa: PLC0415

    issuer = DevIssuer(settings.keys_dir, DevIssuerConfig(enabled=True))
    token = issuer.mint(subject=f"{DEMO_VENDOR}-cluster", tenant=DEMO_VENDOR, roles=["vendor"])
    model = demo_model(grpc_target)
    message = model_to_proto(model)
    with BrokerClient(settings.front, token=token) as vendor:
        try:
            vendor.register_model(message)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            request = registry_pb2.UpdateModelRequest(
                model=message, update_mask=field_mask_pb2.FieldMask(paths=["endpoint"])
            )
            vendor.registry.UpdateModel(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
    return model.ref


def _quickstart(settings: ClusterSettings, ref: str) -> str:
    config = settings.root / "replica-1" / "broker.toml"
    return (
        f"{settings.replicas} replicas serve behind HAProxy at {settings.front}; try:\n"
        f"  export BROKER_TARGET={settings.front}\n"
        f"  export BROKER_TOKEN=$(.venv/bin/broker token mint --config {config}"
        " --tenant acme-bank --role buyer)\n"
        f"  .venv/bin/broker call {ref} --payload examples/demo/iris-call.json\n"
        f"  .venv/bin/broker cluster status --root {settings.root}\n"
        f"Stop everything with: .venv/bin/broker cluster down --root {settings.root}"
        " (or make cluster-down)"
    )


def _status(cluster: Cluster) -> int:
    rows = cluster.status()
    if not rows:
        print(f"no cluster is running from {cluster.settings.root}")
        return 1
    for name, pid, health in rows:
        print(f"{name:<12} pid {pid:<8} {health}")
    return 0


def _say(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)
