"""``python -m benchmarks.scale`` keeps working: its scenarios run on tiny workloads and the tables render."""

from __future__ import annotations

import io
import os

import pytest
from rich.console import Console

from benchmarks.core import Recorder
from benchmarks.scale import Options, Row, Scenario, limit, run_scenario, scenarios, summarize
from benchmarks.scale_report import print_tables
from benchmarks.scale_servers import Server, shared_redis
from tests.harness import require_server

pytestmark = pytest.mark.anyio
OPTIONS = Options(jobs=300, concurrency=10, batch=100, timeout=60)


def rendered(rows: list[Row]) -> str:
    out = io.StringIO()
    print_tables(Console(file=out, width=250), rows, OPTIONS)
    return out.getvalue()


async def test_a_drain_in_this_process_gives_positive_figures_and_renders() -> None:
    server = Server("memory", "memory", "none", "memory://", [], True)
    scenario = Scenario("memory", "cluster", "memory", "memory://, 1 queue, 1 worker in this process")
    row = summarize([await run_scenario(scenario, server, OPTIONS, Recorder(OPTIONS.jobs))])
    assert row.status == "ok"
    assert row.enqueue_one and row.enqueue_bulk and row.drain and row.wall and row.client_cpu is not None
    assert row.enqueue_bulk > 0 and row.drain > 0 and row.duplicates == 0
    assert row.limit
    assert "memory://, 1 queue" in rendered([row])


@pytest.mark.redis
async def test_two_worker_processes_drain_the_shared_redis_and_their_cpu_is_counted() -> None:
    require_server("redis")
    server = shared_redis()
    assert isinstance(server, Server)
    scenario = Scenario("redis-2p", "processes", "redis", "redis://, 2 worker processes", 1, 2)
    row = await run_scenario(scenario, server, OPTIONS, Recorder(OPTIONS.jobs))
    assert row.status == "ok", row.status
    assert row.drain and row.drain > 0 and row.duplicates == 0
    assert row.client_cpu is not None and row.client_cpu > 0
    assert "redis://, 2 worker processes" in rendered([row])


def test_the_limit_names_a_saturated_redis_thread_or_the_client() -> None:
    row = Row("k", "processes", "l", "s", "none", 1, 2, 100, wall=1.0, client_cpu=0.6, server_cpu=0.95)
    row.server_busiest = 0.95
    assert limit(row).startswith("server")
    row.server_busiest = row.server_cpu = 0.2
    row.machine_cpu = 0.9
    row.client_cpu = 1.7
    assert limit(row).startswith("client CPU")
    row.machine_cpu = 1.9 * (os.cpu_count() or 1)
    assert limit(row).startswith("machine CPU")


def test_every_scenario_key_is_unique() -> None:
    keys = [s.key for s in scenarios([1, 2, 3, 4])]
    assert len(keys) == len(set(keys))
