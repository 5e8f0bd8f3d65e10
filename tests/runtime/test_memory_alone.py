"""A producer on memory:// with no worker in its process is warned, loudly, that its jobs will be lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRODUCER = """
import anyio
from asyncjobs import App

app = App()

@app.task(name="report")
async def report(n: int) -> None:
    pass

async def main() -> None:
    async with app:
        for n in range(3):
            assert (await report.enqueue(n)).accepted

anyio.run(main)
"""



def run(script: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ASYNCJOBS_BROKER_URL"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_a_producer_without_a_worker_is_warned_at_enqueue_and_told_the_loss_at_exit() -> None:
    done = run(PRODUCER)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    at_enqueue = [line for line in lines if "on which this process runs no worker" in line]
    assert len(at_enqueue) == 1  # once, not per job
    assert "ASYNCJOBS_BROKER_URL=redis://" in at_enqueue[0]
    assert any("RuntimeWarning: 3 jobs enqueued to memory:// were never run and are lost" in line for line in lines)


def test_a_process_that_runs_its_worker_first_is_not_warned() -> None:
    script = PRODUCER.replace(
        "    async with app:\n",
        "    async with app:\n        await app.broker.consumer(['default'], prefetch=1, lease_seconds=5)\n",
    )
    done = run(script)
    assert done.returncode == 0, done.stderr
    assert "no worker" not in done.stderr and "RuntimeWarning" not in done.stderr
