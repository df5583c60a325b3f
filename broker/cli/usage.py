"""``broker usage report``: a month's invoice (buyer) or statement (vendor), as CSV or JSON.

CSV has one line per call (an invoice line, with the audit leaf index that proves it) and then
one ``TOTAL`` line per currency; amounts are given both in micros (exact integers) and as a
decimal amount of the currency, so a spreadsheet and an auditor read the same figures.
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any, Final

from google.protobuf import json_format

from broker._proto.broker.v1 import usage_pb2
from broker.cli.common import add_client_arguments, client_from_args
from broker.registry.pricing import format_micros

#: The CSV header: the fields of ``UsageRecord`` as the API defines them, then the cost as a
#: decimal amount. Taken from the message, so a field added to the API is a column at once.
COLUMNS: Final = (*(f.name for f in usage_pb2.UsageRecord.DESCRIPTOR.fields), "cost")


def register(sub: Any) -> None:
    """Add ``usage report``."""
    parser = sub.add_parser("usage", help="usage records and invoices (buyers and vendors)")
    actions = parser.add_subparsers(dest="usage_command", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report", help="a month's usage: your tenant's invoice, or your models' statement"
    )
    report.add_argument("--month", required=True, help="calendar month in UTC, YYYY-MM")
    report.add_argument("--tenant", default="", help="buyer tenant (default: your own)")
    report.add_argument("--vendor", default="", help="your vendor name: a vendor's statement")
    report.add_argument("--format", choices=("csv", "json"), default="csv", help="output format")
    add_client_arguments(report)
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Print the report: CSV lines and totals, or one JSON object per record then totals."""
    with client_from_args(args) as client:
        records, totals = client.usage_report(
            args.month, tenant=args.tenant, vendor=args.vendor, timeout=args.timeout
        )
    if args.format == "json":
        for message in (*records, *totals):
            print(json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True))
        return 0
    write_csv(records, totals, sys.stdout)
    return 0


def write_csv(
    records: list[usage_pb2.UsageRecord], totals: list[usage_pb2.UsageTotal], out: Any
) -> None:
    """The CSV form: a header, one row per record, one ``TOTAL`` row per currency."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in records:
        writer.writerow(
            [getattr(record, name) for name in COLUMNS[:-1]] + [format_micros(record.cost_micros)]
        )
    for total in totals:
        row = {name: getattr(total, name, "") for name in COLUMNS[:-1]}
        row.update(call_id="TOTAL", leaf_index="", time_us="", status=f"{total.records} records")
        writer.writerow([row[name] for name in COLUMNS[:-1]] + [format_micros(total.cost_micros)])
