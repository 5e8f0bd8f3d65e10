"""``asyncjobs.testing.run_worker``: the app's jobs run through the real chain; ``settled()`` waits for all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

import asyncjobs.testing
from asyncjobs import App, MemoryDedupeStore, Retry, StartupError
from asyncjobs.memory import MemoryBroker
from asyncjobs.retrying import Backoff
from tests.harness import require_server

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The Python block of the README's "Testing your jobs" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your jobs", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def test_the_readme_example_passes_as_a_users_test_file(tmp_path: Path) -> None:
    (tmp_path / "test_example.py").write_text(readme_example())
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


async def test_retries_run_at_once_and_count_until_max_attempts() -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))
    attempts: list[int] = []

    @app.task(name="always_down", max_attempts=4, backoff=Backoff(base=30, cap=60))
    async def always_down() -> None:
        attempts.append(asyncjobs.current_job().attempt)
        raise ConnectionError("down")

    started = time.monotonic()
    async with asyncjobs.testing.run_worker(app) as w:
        await always_down.enqueue()
        await w.settled()
    assert time.monotonic() - started < 5  # a 30 s backoff was skipped three times
    assert attempts == [1, 2, 3, 4]
    assert (w.stats.retried, w.stats.dead, w.stats.done) == (3, 1, 0)
    [letter] = await w.dead_letters()
    assert (letter.info.reason, letter.info.error_type, letter.info.attempts) == ("max_attempts", "ConnectionError", 4)


async def test_with_instant_retries_off_the_backoff_holds_and_settled_says_what_waits() -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))

    @app.task(name="later")
    async def later() -> None:
        raise Retry(delay=60)

    async with asyncjobs.testing.run_worker(app, instant_retries=False) as w:
        await later.enqueue()
        with pytest.raises(TimeoutError, match=r"0 ready, 1 scheduled for later, 0 running"):
            await w.settled(within=1)
    assert w.stats.retried == 1


async def test_settled_waits_for_the_jobs_handlers_enqueue_and_for_timeouts() -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"))
    done: list[str] = []

    @app.task(name="leaf", queue="leaves")
    async def leaf(n: int) -> None:
        await anyio.sleep(0.05)
        done.append(f"leaf {n}")

    @app.task(name="fan_out")
    async def fan_out(n: int) -> None:
        for i in range(n):
            await leaf.enqueue(i)

    @app.task(name="stuck", timeout=0.2, max_attempts=2)
    async def stuck() -> None:
        await anyio.sleep(30)

    async with asyncjobs.testing.run_worker(app) as w:
        await fan_out.enqueue(5)
        await stuck.enqueue()
        await w.settled()
        assert sorted(done) == [f"leaf {i}" for i in range(5)]
    assert (w.stats.done, w.stats.timed_out, w.stats.dead) == (6, 2, 1)


async def test_dedupe_runs_a_keyed_job_once() -> None:
    app = App(MemoryBroker(f"memory://{uuid.uuid4().hex}"), dedupe=MemoryDedupeStore())
    charged: list[str] = []

    @app.task(name="charge")
    async def charge(invoice: str) -> None:
        charged.append(invoice)

    async with asyncjobs.testing.run_worker(app) as w:
        first = await charge.options(key="inv-1").enqueue("inv-1")
        again = await charge.options(key="inv-1").enqueue("inv-1")
        await w.settled()
    assert (first.accepted, again.accepted) == (True, False)
    assert charged == ["inv-1"]


async def test_an_app_on_memory_gets_a_private_broker_for_the_block_and_its_own_back_after() -> None:
    app = App(f"memory://{uuid.uuid4().hex}")
    ran: list[str] = []

    @app.task(name="note")
    async def note(text: str) -> None:
        ran.append(text)

    await note.enqueue("left over by another test")
    own = app.broker
    async with asyncjobs.testing.run_worker(app) as w:
        assert app.broker is not own
        await note.enqueue("mine")
        await w.settled()
    assert ran == ["mine"]
    assert app.broker is own
    assert (await own.stats("default")).ready == 1


async def test_a_failing_startup_hook_raises_from_run_worker_and_a_failing_assertion_is_not_wrapped() -> None:
    app = App("memory://")

    @app.on_startup
    async def broken() -> None:
        raise OSError("no database")

    with pytest.raises(StartupError, match="broken failed: OSError: no database"):
        async with asyncjobs.testing.run_worker(app):
            pytest.fail("the block must not run when startup failed")

    fine = App("memory://")
    with pytest.raises(AssertionError, match="the test's own"):
        async with asyncjobs.testing.run_worker(fine):
            raise AssertionError("the test's own")


@pytest.mark.redis
async def test_run_worker_on_redis() -> None:
    require_server("redis")
    pytest.importorskip("asyncjobs_redis")
    from tests.harness.redis import delete_prefix

    prefix = f"tt{uuid.uuid4().hex[:10]}"
    app = App(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    seen: list[int] = []

    @app.task(name="redis.flaky", backoff=Backoff(base=10, cap=10))
    async def flaky(n: int) -> None:
        if asyncjobs.current_job().attempt == 1:
            raise ConnectionError("first try fails")
        seen.append(n)

    try:
        async with app, asyncjobs.testing.run_worker(app) as w:
            for n in range(3):
                await flaky.enqueue(n)
            await w.settled()
        assert sorted(seen) == [0, 1, 2]
        assert (w.stats.done, w.stats.retried) == (3, 3)
    finally:
        await delete_prefix(prefix)


@pytest.mark.redis
async def test_run_worker_on_a_broker_given_by_url_for_the_block() -> None:
    require_server("redis")
    pytest.importorskip("asyncjobs_redis")
    from tests.harness.redis import delete_prefix

    prefix = f"tu{uuid.uuid4().hex[:10]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    app = App(f"memory://{uuid.uuid4().hex}")
    own = app.broker

    @app.task(name="redis.ping")
    async def ping() -> None:
        pass

    try:
        async with asyncjobs.testing.run_worker(app, broker=url) as w:
            assert app.broker_url == url
            await ping.enqueue()
            await w.settled()
            assert (await w.broker.stats("default")).ready == 0
        assert w.stats.done == 1
        assert app.broker is own
        assert (await own.stats("default")).ready == 0  # the job went to Redis
    finally:
        await delete_prefix(prefix)


async def test_a_bad_broker_url_is_an_error_and_the_app_keeps_its_own_broker() -> None:
    from asyncjobs import BrokerURLError

    app = App(f"memory://{uuid.uuid4().hex}")
    own = app.broker
    with pytest.raises(BrokerURLError):
        async with asyncjobs.testing.run_worker(app, broker="nosuch://x"):
            pytest.fail("the block must not run")
    assert app.broker is own
