"""``broker audit tail [--follow]``: the audit log as a stream of lines for a log shipper.

One line per entry, in leaf order, flushed as soon as it is written: ``jsonl`` (the entry's
origin, leaf index, hex leaf hash and canonical text), ``ocsf`` or ``cef`` (see
:mod:`broker.audit.siem`). It starts at ``--from-index`` or, by default, at the size of the
newest signed checkpoint (everything before it is already provable, so a shipper that starts
late loses nothing it could not export), prints what exists, and with ``--follow`` waits for
more.

How it survives restarts: it keeps one number, the next leaf index to print, and asks the
broker for entries from there (``QueryEntries.start_index``) every ``--poll`` seconds. When the
broker cannot be reached (UNAVAILABLE, a deadline, a reset connection) it waits with doubling
back-off (up to ``--max-backoff``), opens a new channel, reads the token again (a rotated
``--token-file`` is picked up) and asks from the same index: no gap and no duplicate, whatever
happens in between. Refusals that waiting cannot fix (no permission, a bad argument) end it
with exit status 1. Without a filter, indices are contiguous: the database gives leaves their
indices and commits them in one transaction under one lock, so a later index is never visible
before an earlier one.

Status messages go to standard error, so standard output holds records only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

import grpc

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc
from broker.audit.export import LINE_FORMATS, siem_line
from broker.audit.merkle import VerificationError
from broker.audit.siem import siem_entry
from broker.cli.common import channel_from_args, token_from_args

PAGE_SIZE: Final = 500
#: Errors that waiting can fix: the broker is restarting, overloaded or out of reach.
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.FAILED_PRECONDITION,  # no checkpoint yet on a new log
    }
)


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``broker audit tail`` (filters and client options are added by the caller)."""
    parser.add_argument("--follow", "-f", action="store_true", help="wait for new entries")
    parser.add_argument(
        "--from-index",
        type=int,
        default=None,
        help="first leaf index to print (default: the newest signed checkpoint's size)",
    )
    parser.add_argument("--format", choices=LINE_FORMATS, default="jsonl", help="line format")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    parser.add_argument(
        "--max-backoff", type=float, default=30.0, help="longest wait between reconnects, seconds"
    )


class Tail:
    """The follower's state: the next index to print, the log's origin, the back-off."""

    def __init__(
        self,
        args: argparse.Namespace,
        flt: audit_pb2.AuditFilter,
        out: TextIO,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if args.from_index is not None and args.from_index < 0:
            raise ValueError("--from-index must not be negative")
        if args.poll <= 0 or args.max_backoff <= 0:
            raise ValueError("--poll and --max-backoff must be positive")
        self._args = args
        self._filter = flt
        self._out = out
        self._sleep = sleep
        self.next_index: int | None = args.from_index
        self._origin = ""
        self._backoff = 0.0

    def run(self) -> int:
        """Print until the end of the log (without --follow) or forever; the exit status."""
        while True:
            try:
                printed, full = self._once()
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE:
                    print(f"tail: {code.name}: {exc.details()}", file=sys.stderr)
                    return 1
                self._wait(f"{code.name}: {exc.details()}")
                continue
            self._backoff = 0.0
            if full:
                continue  # more is waiting: ask again at once
            if not self._args.follow:
                return 0
            if printed == 0:
                self._sleep(self._args.poll)

    def _once(self) -> tuple[int, bool]:
        """One connection: learn the origin and the start, print one page; (printed, full)."""
        token = token_from_args(self._args)
        metadata = (("authorization", f"Bearer {token}"),)
        channel = channel_from_args(self._args)
        try:
            stub = audit_pb2_grpc.AuditStub(channel)
            if not self._origin or self.next_index is None:
                reply = stub.GetCheckpoint(
                    audit_pb2.GetCheckpointRequest(), timeout=self._args.timeout, metadata=metadata
                )
                self._origin = reply.checkpoint.split("\n", 1)[0]
                if self.next_index is None:
                    self.next_index = reply.tree_size
            request = audit_pb2.QueryEntriesRequest(
                filter=self._filter, page_size=PAGE_SIZE, start_index=self.next_index
            )
            printed = 0
            for entry in stub.QueryEntries(request, timeout=self._args.timeout, metadata=metadata):
                if entry.leaf_index < self.next_index:
                    continue  # never print an index twice, whatever a server sends
                self._print(entry)
                printed += 1
            return printed, printed == PAGE_SIZE
        finally:
            channel.close()

    def _print(self, entry: audit_pb2.AuditEntry) -> None:
        try:
            item = siem_entry(self._origin, entry.leaf_index, entry.entry)
        except VerificationError as exc:
            raise ValueError(f"tail: the broker sent a malformed entry: {exc}") from exc
        if item.leaf_hash != entry.entry_hash:
            raise ValueError(
                f"tail: leaf {entry.leaf_index}: the broker's leaf hash is not the entry's"
            )
        self._out.write(siem_line(self._args.format, item).decode("utf-8"))
        self._out.flush()
        self.next_index = entry.leaf_index + 1

    def _wait(self, why: str) -> None:
        self._backoff = min(max(self._backoff * 2, 0.25), self._args.max_backoff)
        delay = self._backoff * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not a secret
        where = "the start" if self.next_index is None else f"leaf {self.next_index}"
        print(f"tail: {why}; retrying from {where} in {delay:.1f}s", file=sys.stderr)
        sys.stderr.flush()
        self._sleep(delay)


def run_tail(args: argparse.Namespace, flt: audit_pb2.AuditFilter) -> int:
    """``broker audit tail``: stream entries to standard output (see the module docstring)."""
    tail = Tail(args, flt, sys.stdout)
    try:
        return tail.run()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away. Point stdout at /dev/null so that the interpreter's final flush
        # does not fail again, and say where a new reader should start.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"tail: output closed; the next leaf is {tail.next_index}", file=sys.stderr)
        return 1
