"""``asyncjobs worker --metrics-port N``: a worker process serves Prometheus metrics a scrape can read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path

import anyio
import pytest

from asyncjobs import App
from asyncjobs.envelope import Envelope
from tests.harness import require_server
from tests.observability.test_metrics import free_port, scrape, value

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, port: int) -> subprocess.Popen[str]:
    app_target = "tests.observability.metrics_app:app"
    return subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", "worker", app_target, "--broker", url, "--metrics-port", str(port)],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_worker_process_serves_metrics_on_its_port() -> None:
    require_server("redis")
    pytest.importorskip("asyncjobs_redis")
    from tests.harness.redis import delete_prefix

    prefix = f"m{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    port = free_port()
    proc = start_worker(url, port)
    try:
        async with App(url) as producer:
            await producer.publish([Envelope("obs.ok", (i,)) for i in range(3)] + [Envelope("obs.bad")])
            deadline = time.monotonic() + 30
            while True:
                try:
                    samples = await anyio.to_thread.run_sync(scrape, port)
                except (urllib.error.URLError, ConnectionError):
                    samples = {}
                done = value(samples, "asyncjobs_job_duration_seconds_count", task="obs.ok", outcome="done")
                dead = value(samples, "asyncjobs_job_duration_seconds_count", task="obs.bad", outcome="dead")
                if (done, dead) == (3, 1) and value(samples, "asyncjobs_queue_depth", queue="default", state="dead"):
                    break
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, f"metrics never showed the jobs: done={done} dead={dead}"
                await anyio.sleep(0.2)
        assert value(samples, "asyncjobs_job_dead_letters_total", reason="permanent") == 1
        assert value(samples, "asyncjobs_queue_depth", queue="default", state="dead") == 1
        assert value(samples, "asyncjobs_job_queue_wait_seconds_count", task="obs.ok") == 3
        proc.send_signal(signal.SIGTERM)
        output, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        assert proc.returncode == 0, output
        assert f"serving metrics on http://127.0.0.1:{port}/metrics" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await delete_prefix(prefix)
