"""The worker's log as a pipeline reads it: one JSON object per line, one line per job outcome, tracebacks on failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from asyncjobs import App
from asyncjobs.envelope import Envelope
from tests.harness import require_server

pytestmark = [pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def jobs(prefix: str) -> list[Envelope]:
    parent = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    return [
        Envelope("logs.ok", id=f"{prefix}-ok", headers=parent),
        Envelope("logs.flaky", ("a",), id=f"{prefix}-flaky"),
        Envelope("logs.bad", id=f"{prefix}-bad"),
    ]


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_server("redis")
    from tests.harness.redis import delete_prefix

    prefix = f"l{uuid.uuid4().hex[:10]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}"
    anyio.run(delete_prefix, prefix)


def run_worker(url: str, *args: str, until: list[tuple[str, ...]]) -> tuple[int, list[str]]:
    """Run a worker process on ``url``, enqueue the jobs, SIGTERM it once, for each of ``until``, a line holds all its texts."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncjobs.cli",
            *args[:2],
            "worker",
            "tests.cli.logs_app:app",
            "--broker",
            url,
            *args[2:],
        ],
        cwd=ROOT,
        env={**os.environ},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    async def enqueue() -> None:
        async with App(url) as producer:
            await producer.publish(jobs(url.rsplit("=", 1)[1]))

    try:
        anyio.run(enqueue)
        deadline = time.monotonic() + 30
        while not all(any(all(t in line for t in texts) for line in lines) for texts in until):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        reader.join(timeout=10)
        return code, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    "args",
    [("--log-format", "json", "--log-jobs"), ("--log-level", "INFO", "--log-jobs", "--log-format", "json")],
    ids=["before-worker", "after-worker"],
)
def test_json_logs_have_one_object_per_line_and_one_line_per_job_outcome(redis_url: str, args: tuple[str, ...]) -> None:
    prefix = redis_url.rsplit("=", 1)[1]
    code, lines = run_worker(
        redis_url,
        *args,
        until=[(f"{prefix}-bad",), (f"{prefix}-ok",), (f"{prefix}-flaky", '"outcome": "done"')],
    )
    assert code == 0
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= doc.keys() for doc in docs)
    by_job: dict[str, list[dict[str, object]]] = {}
    for doc in docs:
        if doc.get("job_id"):
            by_job.setdefault(str(doc["job_id"]), []).append(doc)
    (ok,) = by_job[f"{prefix}-ok"]
    assert (ok["level"], ok["task"], ok["queue"], ok["attempt"], ok["outcome"]) == (
        "INFO",
        "logs.ok",
        "default",
        1,
        "done",
    )
    assert ok["trace_id"] == TRACE
    assert isinstance(ok["duration"], float) and 0 <= ok["duration"] < 5
    assert [(d["outcome"], d["attempt"], d["level"]) for d in by_job[f"{prefix}-flaky"]] == [
        ("retried", 1, "WARNING"),
        ("done", 2, "INFO"),
    ]
    (bad,) = by_job[f"{prefix}-bad"]
    assert (bad["level"], bad["outcome"], bad["reason"]) == ("ERROR", "dead", "permanent")
    assert "check_the_invoice" in str(bad["message"]) and "PermanentError" in str(bad["message"])
    assert "\x1b" in str(bad["message"]) and "\x1b" not in "".join(lines)  # escaped by JSON, shown literally
    stopped = [d for d in docs if str(d["message"]).startswith("worker stopped")]
    assert [d["message"] for d in stopped] == ["worker stopped: done 2, retried 1, dead 1"]


def test_without_log_jobs_only_failures_are_logged_with_their_traceback(redis_url: str) -> None:
    prefix = redis_url.rsplit("=", 1)[1]
    code, lines = run_worker(redis_url, "--log-level", "INFO", until=[(f"{prefix}-bad",), (f"{prefix}-flaky",)])
    text = "".join(lines)
    assert code == 0
    assert f"{prefix}-ok" not in text
    assert f"ERROR asyncjobs.jobs: job {prefix}-bad (task logs.bad, attempt 1) dead-lettered" in text
    assert "in check_the_invoice" in text and "\\x1b[31m" in text and "\x1b" not in text
    assert f"WARNING asyncjobs.jobs: job {prefix}-flaky (task logs.flaky, attempt 1) failed; retried" in text
    assert "ConnectionError: first try fails" in text
