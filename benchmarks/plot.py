"""An optional picture of a run: drain and enqueue per scenario, one panel per broker (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.core import Result


def plot(results: dict[str, list[Result]], path: Path) -> Path | None:
    """Save a bar chart of ``results`` to ``path`` (PNG); ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    brokers = [b for b, rows in results.items() if any(r.drain for r in rows)]
    if not brokers:
        return None
    fig, axes = plt.subplots(len(brokers), 1, figsize=(11, 3.2 * len(brokers)), squeeze=False)
    for ax, broker in zip(axes[:, 0], brokers, strict=True):
        rows = [r for r in results[broker] if r.status == "ok"]
        labels = [r.label for r in rows]
        ys = range(len(rows))
        enqueue = [max(v for v in (r.enqueue_one, r.enqueue_bulk, 0.0) if v is not None) for r in rows]
        drain = [r.drain or 0.0 for r in rows]
        ax.barh([y + 0.2 for y in ys], drain, height=0.4, label="drain", color="#3b7dd8")
        ax.barh([y - 0.2 for y in ys], enqueue, height=0.4, label="enqueue (fastest)", color="#9ab8e6")
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(left=100)
        ax.set_xlabel("jobs/s (log scale)")
        ax.set_title(broker)
        ax.legend(fontsize=8, loc="lower right")
        for y, row in zip(ys, rows, strict=True):
            weight = "bold" if row.role == "asyncjobs" else "normal"
            ax.text(drain[y], y + 0.2, f" {drain[y]:,.0f}", va="center", fontsize=7, fontweight=weight)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
