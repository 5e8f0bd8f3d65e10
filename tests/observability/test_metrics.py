"""Metrics over a Prometheus endpoint: a worker serves them, a scrape over HTTP reads the values."""

from __future__ import annotations

import socket
import urllib.request
import uuid

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncjobs import App, PermanentError
from asyncjobs.broker import OutgoingJob
from asyncjobs.dedupe import MemoryDedupeStore
from asyncjobs.memory import MemoryBroker
from asyncjobs.metrics_server import serve_metrics
from asyncjobs.retrying import Backoff
from asyncjobs.task import CallOptions
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_worker_metrics_are_served_over_http() -> None:
    store = MemoryDedupeStore()
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"), dedupe=store)
    tag = uuid.uuid4().hex[:8]  # task names of this test only: counters are per process
    ok_name, bad_name, flaky_name = f"ok_{tag}", f"bad_{tag}", f"flaky_{tag}"
    calls: list[int] = []

    @app.task(name=ok_name)
    async def ok() -> None:
        await anyio.sleep(0.01)

    @app.task(name=bad_name)
    async def bad() -> None:
        raise PermanentError("nope")

    @app.task(name=flaky_name, backoff=Backoff(base=0.01, cap=0.02))
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("down")

    for _ in range(5):
        await ok.enqueue()
    await bad.enqueue()
    await flaky.enqueue()
    await ok.options(queue="later", delay=60).enqueue()
    await store.claim("paid", "earlier-worker", lease_seconds=5, ttl=60)  # a key already done...
    await store.complete("paid", "earlier-worker", 60)
    env = app.build(ok.spec, CallOptions(key="paid"), (), {})  # ...and a job delivered with it
    await app.broker.enqueue([OutgoingJob(env.id, "default", env.encode())])
    port = free_port()
    async with serve_metrics(port, app.broker, ["default", "later"], poll_seconds=0.1), running(app) as worker:
        await eventually(lambda: worker.stats.done == 6 and worker.stats.dead == 1 and worker.stats.skipped == 1)
        await anyio.sleep(0.3)  # one more stats poll
        samples = await anyio.to_thread.run_sync(scrape, port)
    duration = "asyncjobs_job_duration_seconds_count"
    assert value(samples, duration, task=ok_name, outcome="done") == 5
    assert value(samples, duration, task=ok_name, outcome="skipped") == 1
    assert value(samples, "asyncjobs_dedupe_skips_total", task=ok_name) == 1
    assert value(samples, duration, task=bad_name, outcome="dead", reason="permanent") == 1
    assert value(samples, duration, task=flaky_name, outcome="retry") == 1
    assert value(samples, duration, task=flaky_name, outcome="done") == 1
    assert value(samples, "asyncjobs_job_queue_wait_seconds_count", task=ok_name, queue="default") == 6
    assert value(samples, "asyncjobs_job_retries_total", task=flaky_name, error="ConnectionError") == 1
    assert value(samples, "asyncjobs_job_attempts_sum", task=flaky_name, outcome="done") == 2
    assert value(samples, "asyncjobs_job_dead_letters_total", reason="permanent") >= 1
    assert value(samples, "asyncjobs_jobs_in_flight", task=ok_name) == 0
    assert value(samples, "asyncjobs_queue_depth", queue="later", state="scheduled") == 1
    assert value(samples, "asyncjobs_queue_depth", queue="default", state="dead") == 1
    assert value(samples, "asyncjobs_queue_depth", queue="default", state="ready") == 0
    assert any(n == "asyncjobs_queue_oldest_age_seconds" and ("queue", "default") in ls for n, ls in samples)


async def test_a_taken_port_is_a_clear_error() -> None:
    from asyncjobs import ConfigError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            async with serve_metrics(port, MemoryBroker(), ["default"]):
                pass
