"""``python -m tests.fuzz <harness|all> [--seconds N] [--save-corpus]``: see ``runner.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.fuzz.runner import HARNESSES, Result, report, run, table


def main(argv: list[str] | None = None) -> int:
    """Run the named harnesses (or all) one after another; exit 1 if any found something."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("harness", nargs="+", help=f"'all' or any of: {', '.join(HARNESSES)}")
    parser.add_argument("--seconds", type=int, default=60, help="budget per harness")
    parser.add_argument(
        "--save-corpus", action="store_true", help="add new inputs to the checked-in corpus"
    )
    parser.add_argument("--artifacts", type=Path, help="where crashing inputs go (findings/)")
    args = parser.parse_args(argv)
    names = list(HARNESSES) if args.harness == ["all"] else args.harness
    results: list[Result] = []
    for name in names:
        result = run(name, args.seconds, save_corpus=args.save_corpus, artifact_dir=args.artifacts)
        results.append(result)
        status = result.finding or "ok"
        print(f"{name}: {result.inputs} inputs, {status}", file=sys.stderr, flush=True)
        if result.finding:
            print(report(result), file=sys.stderr)
    print(table(results))
    return 1 if any(r.finding for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
