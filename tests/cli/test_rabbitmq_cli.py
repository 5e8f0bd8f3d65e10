"""The command line on a real RabbitMQ: quiet one-shot commands, a clean worker shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncjobs.broker import Broker, OutgoingJob
from asyncjobs.envelope import Envelope
from tests.harness import require_server

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]
ROOT = Path(__file__).resolve().parents[2]
URL = "amqp://guest:guest@127.0.0.1:5672/"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture
async def rabbit() -> AsyncIterator[tuple[Broker, str]]:
    """A RabbitMQ broker in a namespace of its own, and the URL a command uses to reach the same queues."""
    require_server("rabbitmq")
    from tests.harness.rabbitmq import rabbitmq_harness

    namespace = f"c{uuid.uuid4().hex[:10]}"
    async with rabbitmq_harness(namespace) as broker:
        yield broker, f"{URL}?queue_type=quorum&queue_prefix={namespace}."


async def test_one_shot_commands_log_nothing_but_show_the_connect_line_at_debug(rabbit: tuple[Broker, str]) -> None:
    broker, url = rabbit
    job = Envelope("sample.nap", (0.01,))
    assert await broker.enqueue([OutgoingJob(job.id, "default", job.encode())]) == [True]
    quiet = cli("stats", "--broker", url, "-q", "default", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["ready"] == 1
    debug = cli("--log-level", "DEBUG", "stats", "--broker", url, "-q", "default")
    assert "DEBUG asyncjobs_rabbitmq.broker: connected to RabbitMQ" in debug.stderr


async def test_a_worker_says_it_connected_and_stops_without_client_noise(rabbit: tuple[Broker, str]) -> None:
    text = await anyio.to_thread.run_sync(start_and_stop_a_worker, rabbit[1])
    assert "INFO asyncjobs_rabbitmq.broker: connected to RabbitMQ" in text
    assert "worker stopped: no jobs" in text
    for noise in ("Reconnecting", "Task was destroyed", "Traceback", "Exception ignored"):
        assert noise not in text, text


async def test_a_second_sigterm_stops_the_worker_at_once_without_killing_it_mid_close(
    rabbit: tuple[Broker, str],
) -> None:
    """The second signal comes while the consumer closes (its last acks settling in): the worker ends
    cleanly, and every job is either done or back in the queue, never both."""
    broker, url = rabbit
    jobs = [Envelope("sample.nap", (0.005,)) for _ in range(3000)]
    await broker.enqueue([OutgoingJob(job.id, "default", job.encode()) for job in jobs])
    done = 0
    for _ in range(5):
        text = await anyio.to_thread.run_sync(start_and_stop_a_worker, url, 0.1)
        assert "worker stopped" in text, text
        done += sum(int(n) for n in re.findall(r"worker stopped: done (\d+)", text))
    await anyio.sleep(1.0)  # whatever the server gets back from a closed channel is requeued by now
    assert done > 0
    assert (await broker.stats("default")).ready == len(jobs) - done, "a job both done and back in the queue"


def start_and_stop_a_worker(url: str, second_after: float | None = None) -> str:
    """Start a worker process on ``url``, SIGTERM it once it started (again ``second_after`` later); its log."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs.cli", "worker", "tests.cli.sample_app:app", "--broker", url],
        cwd=ROOT,
        env={**os.environ},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline, lines = time.monotonic() + 30, []
        while not any("worker started" in line for line in lines) and time.monotonic() < deadline:
            lines.append(proc.stderr.readline())
        time.sleep(0.3)  # jobs flowing
        proc.send_signal(signal.SIGTERM)
        if second_after is not None:
            time.sleep(second_after)
            proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return "".join(lines) + rest


async def test_read_only_commands_on_a_missing_queue_say_so_and_create_nothing(rabbit: tuple[Broker, str]) -> None:
    broker, url = rabbit
    for command in (["stats"], ["dead", "list"], ["dead", "show", "some-id"], ["dead", "purge", "--all"]):
        done = await anyio.to_thread.run_sync(lambda c=command: cli(*c, "-q", "typo", "--broker", url))
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.strip() == "Error: no such queue 'typo' on this broker (check -q, --broker and its prefix)"
    assert not await broker.queue_exists("typo")  # type: ignore[attr-defined]
    for suffix in ("", ".dead"):  # nor any queue of its topology
        assert not await broker.queue_exists(f"typo{suffix}")  # type: ignore[attr-defined]
