"""Tables, ratios and targets of a run, and its JSON record."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.core import Result, Workload

RESULTS_DIR = Path(__file__).parent / "results"
PACKAGES = (
    "asyncjobs",
    "asyncjobs-redis",
    "asyncjobs-rabbitmq",
    "taskiq",
    "taskiq-redis",
    "taskiq-aio-pika",
    "arq",
    "saq",
    "dramatiq",
    "celery",
    "redis",
    "aio-pika",
)


@dataclass(frozen=True, slots=True)
class Target:
    """``subject``'s ``metric`` must be at least ``factor`` times the reference."""

    broker: str
    text: str
    subject: str
    metric: str
    factor: float
    reference: str  # a scenario key, or "peers" (the best peer) / "each peer" (every peer)
    ref_metric: str | None = None


TARGETS: tuple[Target, ...] = (
    Target("memory", "drain >= 0.5x bare asyncio loop", "asyncjobs-memory", "drain", 0.5, "bare-asyncio"),
    Target("memory", "drain >= 2x taskiq InMemoryBroker", "asyncjobs-memory", "drain", 2.0, "taskiq-memory"),
    Target("redis", "drain >= 5x fastest peer", "asyncjobs-redis", "drain", 5.0, "peers"),
    Target("redis", "drain >= 2x raw one-round-trip-per-step loop", "asyncjobs-redis", "drain", 2.0, "redis-raw-1rt"),
    Target(
        "redis",
        "enqueue_many >= 0.5x raw pipelined enqueue",
        "asyncjobs-redis",
        "enqueue_bulk",
        0.5,
        "redis-raw-batched",
    ),
    Target("rabbitmq", "drain >= 0.8x raw consume + ack", "asyncjobs-rabbitmq", "drain", 0.8, "amqp-raw"),
    Target(
        "rabbitmq", "enqueue_many >= 0.8x raw batched confirms", "asyncjobs-rabbitmq", "enqueue_bulk", 0.8, "amqp-raw"
    ),
    Target("rabbitmq", "drain beats every peer", "asyncjobs-rabbitmq", "drain", 1.0, "each peer"),
    Target(
        "rabbitmq", "enqueue beats every peer (fastest way of each)", "asyncjobs-rabbitmq", "enqueue", 1.0, "each peer"
    ),
    Target(
        "tracing", "drain, defaults without SDK >= 0.95x no tracing code", "tracing-off", "drain", 0.95, "tracing-none"
    ),
    Target(
        "tracing",
        "enqueue, defaults without SDK >= 0.95x no tracing code",
        "tracing-off",
        "enqueue",
        0.95,
        "tracing-none",
    ),
    Target(
        "tracing", "drain, explicit TracingMiddleware without SDK >= 0.95x", "tracing-on", "drain", 0.95, "tracing-none"
    ),
)


def _fmt_rate(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}"


def _fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or not ref or math.isnan(value) or math.isnan(ref):
        return "-"
    return f"{value / ref:.2f}x"


def _ceiling(rows: Sequence[Result]) -> Result | None:
    return next((r for r in rows if r.role == "ceiling" and r.status == "ok"), None)


def broker_table(broker: str, rows: Sequence[Result], workload: Workload) -> Table:
    """One broker's rows, with each figure's ratio to the ceiling row."""
    ceiling = _ceiling(rows)
    ref = f"vs {ceiling.key}" if ceiling else "vs ceiling"
    table = Table(
        title=f"{broker}: {workload.jobs:,} no-op jobs, concurrency {workload.concurrency}, one process",
        caption=f"ratios are to the ceiling row ({ceiling.label if ceiling else 'none ran'}); latency: paced "
        f"enqueue of {workload.paced:,} jobs at {workload.rate:,.0f}/s",
    )
    table.add_column("scenario")
    table.add_column("enqueue 1x1\njobs/s", justify="right")
    table.add_column("enqueue bulk\njobs/s", justify="right")
    table.add_column("drain\njobs/s", justify="right")
    table.add_column("enq->start\np50 ms", justify="right")
    table.add_column("enq->start\np99 ms", justify="right")
    table.add_column(f"drain\n{ref}", justify="right")
    table.add_column(f"bulk\n{ref}", justify="right")
    table.add_column("status")
    for row in rows:
        style = "bold" if row.role == "asyncjobs" else ("dim" if row.status != "ok" else None)
        table.add_row(
            row.label,
            _fmt_rate(row.enqueue_one),
            _fmt_rate(row.enqueue_bulk),
            _fmt_rate(row.drain),
            _fmt_ms(row.latency_p50),
            _fmt_ms(row.latency_p99),
            _ratio(row.drain, ceiling.drain if ceiling else None),
            _ratio(row.enqueue_bulk, ceiling.enqueue_bulk if ceiling else None),
            row.status if row.duplicates == 0 else f"{row.status}, {row.duplicates} duplicates",
            style=style,
        )
    return table


def figure(row: Result | None, metric: str) -> float | None:
    """A row's figure; ``enqueue`` is the faster of its 1x1 and bulk enqueue."""
    if row is None:
        return None
    if metric == "enqueue":
        values = [v for v in (row.enqueue_one, row.enqueue_bulk) if v is not None]
        return max(values) if values else None
    value: float | None = getattr(row, metric)
    return value


def evaluate(target: Target, rows: Sequence[Result]) -> tuple[str, str]:
    """(verdict, detail) of one target over one broker's rows; verdict is met, missed or n/a."""
    by_key = {r.key: r for r in rows if r.status == "ok"}
    value = figure(by_key.get(target.subject), target.metric)
    ref_metric = target.ref_metric or target.metric
    if target.reference in ("peers", "each peer"):
        peers = [r for r in rows if r.role == "peer" and r.status == "ok" and figure(r, ref_metric) is not None]
        if not peers:
            return "n/a", "no peer ran"
        best = max(peers, key=lambda r: figure(r, ref_metric) or 0.0)
        ref_value, ref_label = figure(best, ref_metric), best.label
    else:
        ref_row = by_key.get(target.reference)
        ref_value = figure(ref_row, ref_metric)
        ref_label = ref_row.label if ref_row else target.reference
    if value is None or ref_value is None:
        missing = target.subject if value is None else target.reference
        return "n/a", f"{missing} did not run"
    ratio = value / ref_value if ref_value else math.inf
    verdict = "met" if ratio >= target.factor else "missed"
    return verdict, f"{ratio:.2f}x {ref_label} ({_fmt_rate(value)} vs {_fmt_rate(ref_value)} jobs/s)"


def targets_table(broker: str, rows: Sequence[Result]) -> Table | None:
    """The issue's targets for this broker, each met, missed or n/a."""
    targets = [t for t in TARGETS if t.broker == broker]
    if not targets:
        return None
    table = Table(title=f"{broker}: targets", show_header=True)
    table.add_column("target")
    table.add_column("verdict")
    table.add_column("measured")
    colors = {"met": "green", "missed": "red", "n/a": "yellow"}
    for target in targets:
        verdict, detail = evaluate(target, rows)
        table.add_row(target.text, f"[{colors[verdict]}]{verdict}[/]", detail)
    return table


def print_report(console: Console, results: dict[str, list[Result]], workload: Workload) -> None:
    """Every broker's table, its notes and its targets."""
    for broker, rows in results.items():
        console.print(broker_table(broker, rows, workload))
        for row in rows:
            if row.note:
                console.print(f"  [dim]{row.label}: {row.note}[/]")
        targets = targets_table(broker, rows)
        if targets is not None:
            console.print(targets)
        console.print()


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_json(results: dict[str, list[Result]], workload: Workload, argv: Sequence[str]) -> Path:
    """Write the run to ``benchmarks/results/<UTC time>.json``; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{stamp}.json"
    verdicts: list[dict[str, Any]] = []
    for target in TARGETS:
        if target.broker in results:
            verdict, detail = evaluate(target, results[target.broker])
            verdicts.append({"broker": target.broker, "target": target.text, "verdict": verdict, "detail": detail})
    doc = {
        "command": "python -m benchmarks " + " ".join(argv),
        "when": stamp,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": _versions(),
        "workload": {
            "jobs": workload.jobs,
            "concurrency": workload.concurrency,
            "paced_jobs": workload.paced,
            "paced_rate": workload.rate,
            "batch": workload.batch,
        },
        "results": {broker: [r.to_json() for r in rows] for broker, rows in results.items()},
        "targets": verdicts,
    }
    path.write_text(json.dumps(_finite(doc), indent=2))
    return path


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


Progress = Callable[[str, int, int], None]
