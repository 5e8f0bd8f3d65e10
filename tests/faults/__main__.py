"""Long form: ``python -m tests.faults --broker redis --long``; prints a table and writes JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("--broker", choices=["redis", "amqp", "all"], default="all")
    parser.add_argument("--scenario", action="append", help="scenario name (repeatable; default all)")
    parser.add_argument("--long", action="store_true", help="the long form (>= 20 SIGTERMs, bigger loads)")
    parser.add_argument("--keep", default=None, help="keep the worker logs in this directory")
    parser.add_argument("--json", default="fault-report.json", help="where to write the figures")
    args = parser.parse_args()
    from tests.faults.catalog import ONLY_ON, SCENARIOS

    names = args.scenario or list(SCENARIOS)
    brokers = ["redis", "amqp"] if args.broker == "all" else [args.broker]
    reports = []
    console = Console(width=220)
    for name in names:
        for broker in brokers:
            if broker not in ONLY_ON.get(name, (broker,)):
                continue
            with tempfile.TemporaryDirectory(prefix="aj-faults-") as tmp:
                where = Path(args.keep) / f"{name}-{broker}" if args.keep else Path(tmp)
                where.mkdir(parents=True, exist_ok=True)
                console.print(f"[bold]{name}[/bold] on {broker} ...")
                report = anyio.run(SCENARIOS[name], broker, where, args.long)
            reports.append(report)
            console.print(report.as_dict())
    table = Table(title="asyncjobs fault suite" + (" (long)" if args.long else ""))
    for col in (
        "scenario",
        "broker",
        "enqueued",
        "done",
        "dead",
        "lost",
        "executions",
        "dups",
        "excused",
        "max runs",
        "side effects/key",
        "exit s (max)",
        "recovery s (max)",
        "s",
    ):
        table.add_column(col)
    for r in reports:
        table.add_row(
            r.scenario,
            r.broker,
            str(r.enqueued),
            str(r.done),
            str(r.dead),
            ("[red]" if r.lost else "") + str(r.lost),
            str(r.executions),
            str(r.duplicates),
            str(r.allowed_duplicates),
            str(r.max_runs),
            str(r.side_effects_per_key or "-"),
            f"{max(r.exit_seconds):.2f}" if r.exit_seconds else "-",
            f"{max(r.recovery_seconds):.2f}" if r.recovery_seconds else "-",
            f"{r.seconds}",
        )
    console.print(table)
    Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2, default=str))
    console.print(f"figures written to {args.json}")
    return 1 if any(r.lost for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
