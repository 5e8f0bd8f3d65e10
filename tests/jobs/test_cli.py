"""``asyncjobs job show`` and ``asyncjobs job cancel``, run as real processes against Redis and PostgreSQL stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from asyncjobs import App, progress
from tests.jobs.conftest import POSTGRES_URL, REDIS_URL
from tests.runtime.helpers import running

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
FAST = {"heartbeat_seconds": 0.2, "lease_seconds": 5.0, "fetch_wait_seconds": 0.2}
WIDE = {"COLUMNS": "250"}


def store_args(app: App) -> list[str]:
    """The CLI options naming the app's result store."""
    store = app.results
    prefix = getattr(store, "prefix", None)
    if prefix is not None:
        return ["--results", REDIS_URL, "--prefix", prefix]
    table = getattr(store, "table", "")
    return ["--results", POSTGRES_URL, "--prefix", table.removesuffix("_jobs")]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs.cli", "job", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **WIDE},
    )


@pytest.fixture
def remote_app(app: App) -> App:
    """The app fixture, on stores another process can read (not the in-process one)."""
    if app.results is None or app.results.local:
        pytest.skip("a store in the test's own process is not readable by the command line")
    return app


async def test_job_show_prints_status_progress_attempts_and_result(remote_app: App) -> None:
    app = remote_app

    @app.task(keep_result=60, name="jobs.report")
    async def report(pages: int) -> dict[str, int]:
        await progress(1.0, "\x1b[31mall pages\x1b[0m")
        return {"pages": pages}

    ref = await report.enqueue(10)
    async with running(app, **FAST):
        assert await ref.result(timeout=10) == {"pages": 10}  # the last progress goes with the outcome
    shown = await anyio.to_thread.run_sync(cli, "show", ref.id, *store_args(app), "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["state"] == "done"
    assert doc["result"] == {"pages": 10}
    assert doc["task"] == "jobs.report"
    assert doc["attempt"] == 1
    assert doc["progress"] == 1.0
    assert [e["status"] for e in doc["history"]][:: len(doc["history"]) - 1] == ["queued", "done"]
    table = await anyio.to_thread.run_sync(cli, "show", ref.id, *store_args(app))
    assert table.returncode == 0, table.stderr
    for text in ("done", "jobs.report", "100%", '{"pages":10}', "running"):
        assert text in table.stdout
    assert "\x1b[31m" not in table.stdout  # a handler's text is shown escaped, never as terminal codes
    assert "\\x1b[31mall pages" in table.stdout


async def test_job_show_of_an_unknown_job_exits_non_zero_with_a_reason(remote_app: App) -> None:
    shown = await anyio.to_thread.run_sync(cli, "show", "no-such-job", *store_args(remote_app))
    assert shown.returncode != 0
    assert "no record of job 'no-such-job'" in shown.stderr
    assert "Traceback" not in shown.stderr


async def test_job_cancel_keeps_a_queued_job_from_running(remote_app: App) -> None:
    app = remote_app
    ran: list[int] = []

    @app.task(keep_result=60)
    async def work() -> int:
        ran.append(1)
        return 1

    ref = await work.enqueue()
    done = await anyio.to_thread.run_sync(cli, "cancel", ref.id, *store_args(app))
    assert done.returncode == 0, done.stderr
    assert f"job {ref.id}: cancelled" in done.stdout
    async with running(app, **FAST) as worker:
        with anyio.fail_after(10):
            while worker.stats.cancelled < 1:  # noqa: ASYNC110
                await anyio.sleep(0.02)
    assert ran == []
    shown = await anyio.to_thread.run_sync(cli, "show", ref.id, *store_args(app), "--json")
    assert json.loads(shown.stdout)["state"] == "cancelled"
    again = await anyio.to_thread.run_sync(cli, "cancel", ref.id, *store_args(app))
    assert "nothing to cancel" in again.stdout


def test_job_commands_need_a_store() -> None:
    shown = cli("show", "x")
    assert shown.returncode != 0
    assert "--results URL" in shown.stderr
