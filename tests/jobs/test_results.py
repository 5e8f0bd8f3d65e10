"""Results and status through job handles, on every broker and a result store that fits it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asyncjobs import App, JobFailedError, Retry
from asyncjobs.errors import ConfigError, NoResultStoreError, ResultTimeoutError
from asyncjobs.results.handle import DEFAULT_KEEP, default_keep
from tests.runtime.helpers import running

pytestmark = pytest.mark.anyio

FAST = {"heartbeat_seconds": 0.2, "lease_seconds": 5.0, "fetch_wait_seconds": 0.2}


async def test_result_of_a_task_that_keeps_results_is_its_return_value(app: App) -> None:
    @app.task(keep_result=60)
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    ref = await add.enqueue(2, 3)
    assert (await ref.status()).state == "queued"
    async with running(app, **FAST):
        assert await ref.result(timeout=10) == {"sum": 5}
    status = await ref.status()
    assert status.state == "done"
    assert status.attempt == 1
    assert status.has_result
    states = [entry["status"] for entry in status.history]
    assert states in (["queued", "running", "done"], ["queued", "done"])  # "running" rides on a heartbeat


async def test_status_shows_running_with_its_attempt_and_worker(app: App) -> None:
    started, release = anyio.Event(), anyio.Event()

    @app.task(keep_result=60)
    async def slow() -> str:
        started.set()
        await release.wait()
        return "ok"

    ref = await slow.enqueue()
    async with running(app, **FAST):
        with anyio.fail_after(10):
            await started.wait()
            while (status := await ref.status()).state != "running":  # written with the next heartbeat
                assert status.state == "queued"
                await anyio.sleep(0.02)
        assert status.attempt == 1
        assert status.worker
        release.set()
        assert await ref.result(timeout=10) == "ok"


async def test_a_delayed_job_is_scheduled_until_it_is_due(app: App) -> None:
    @app.task(keep_result=60)
    async def later() -> int:
        return 1

    ref = await later.options(delay=30).enqueue()
    status = await ref.status()
    assert status.state == "scheduled"
    assert status.next_at is not None


async def test_result_of_a_dead_job_raises_with_its_failure(app: App) -> None:
    @app.task(keep_result=60, max_attempts=1)
    async def broken() -> int:
        raise ValueError("no such invoice 42")

    ref = await broken.enqueue()
    async with running(app, **FAST):
        with pytest.raises(JobFailedError, match="no such invoice 42") as caught:
            await ref.result(timeout=10)
    status = await ref.status()
    assert status.state == "dead"
    assert status.reason == "max_attempts" or status.reason == "error"
    assert caught.value.status == status or caught.value.status.state == "dead"
    [dead] = await app.broker.list_dead("default")
    assert dead.info.error_message == "no such invoice 42"


async def test_a_failed_attempt_shows_retrying_with_its_next_time(app: App) -> None:
    tries = []

    @app.task(keep_result=60, max_attempts=2)
    async def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise Retry(delay=30)
        return "second"

    ref = await flaky.enqueue()
    async with running(app, **FAST):
        with anyio.fail_after(10):
            while (status := await ref.status()).state != "retrying":  # noqa: ASYNC110
                await anyio.sleep(0.05)
    assert status.next_at is not None
    assert status.attempt == 1
    assert status.error is not None and "Retry" in status.error


async def test_result_waits_for_a_job_enqueued_before_any_worker_runs(app: App) -> None:
    @app.task(keep_result=60)
    async def answer() -> int:
        return 42

    ref = await answer.enqueue()
    with pytest.raises(ResultTimeoutError, match="has not finished"):
        await ref.result(timeout=0.3)
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def wait() -> None:
            got.append(await ref.result(timeout=15))

        tg.start_soon(wait)
        await anyio.sleep(0.2)
        async with running(app, **FAST):
            with anyio.fail_after(15):
                while not got:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
    assert got == [42]


async def test_a_result_over_the_store_limit_is_refused_and_the_job_dead_lettered(app: App) -> None:
    assert app.results is not None
    app.results.max_result_bytes = 1000

    @app.task(keep_result=60)
    async def huge() -> str:
        return "x" * 5000

    ref = await huge.enqueue()
    async with running(app, **FAST) as worker:
        with pytest.raises(JobFailedError, match="over the result store's limit of 1000"):
            await ref.result(timeout=10)
    assert (await ref.status()).reason == "result_too_large"
    assert worker.stats.dead == 1
    assert worker.stats.done == 0
    [dead] = await app.broker.list_dead("default")
    assert dead.info.reason == "result_too_large"


async def test_another_app_gets_the_same_handle_by_id(app: App) -> None:
    @app.task(keep_result=60, name="jobs.double")
    async def double(x: int) -> int:
        return 2 * x

    ref = await double.enqueue(21)
    async with running(app, **FAST):
        await ref.result(timeout=10)
    other = App(app.broker, results=app.results)  # another process builds its app the same way
    assert await other.job(ref.id).result(timeout=5) == 42
    assert (await other.job(ref.id).status()).task == "jobs.double"
    assert (await other.job("never-enqueued").status()).state == "unknown"


async def test_a_task_that_keeps_no_results_writes_nothing_and_says_how_to_keep_them(app: App) -> None:
    @app.task(keep_result=0)
    async def fire() -> int:
        return 1

    ref = await fire.enqueue()
    async with running(app, **FAST) as worker:
        with anyio.fail_after(10):
            while worker.stats.done < 1:  # noqa: ASYNC110
                await anyio.sleep(0.02)
    assert (await ref.status()).state == "unknown"
    with pytest.raises(ConfigError, match="keep_result=SECONDS"):
        await ref.result(timeout=1)


def test_results_are_kept_by_default_only_for_handlers_annotated_to_return_a_value() -> None:
    async def returns_int() -> int:
        return 1

    async def returns_none() -> None:
        return None

    async def unannotated():  # type: ignore[no-untyped-def]
        return 1

    assert default_keep(returns_int) == DEFAULT_KEEP
    assert default_keep(returns_none) == 0
    assert default_keep(unannotated) == 0
    app = App("memory://keep-default")

    @app.task
    async def typed() -> int:
        return 1

    assert typed.spec.options.keep_result == DEFAULT_KEEP


async def test_an_amqp_app_without_a_store_names_the_fix() -> None:
    app = App("amqp://guest:guest@127.0.0.1:5672/")
    assert app.results is None
    ref = app.job("some-id")
    with pytest.raises(NoResultStoreError, match=r"RedisResultStore\.from_url|PostgresResultStore"):
        await ref.result(timeout=1)
    with pytest.raises(NoResultStoreError):
        await ref.cancel()


async def test_a_result_the_store_fails_to_write_is_not_acked_and_the_job_runs_again(app: App) -> None:
    store = app.results
    assert store is not None
    write_many = store.write_many
    failures: list[str] = []

    async def flaky(writes: Any) -> None:
        if any(final for *_, final in writes) and not failures:
            failures.append(writes[0][0])
            raise ConnectionError("result store unreachable")
        await write_many(writes)

    store.write_many = flaky  # type: ignore[method-assign]
    runs: list[int] = []

    @app.task(keep_result=60)
    async def once() -> int:
        runs.append(1)
        return len(runs)

    ref = await once.enqueue()
    async with running(app, **FAST) as worker:  # one worker: the retry comes on every broker, not at a stop
        assert await ref.result(timeout=30) == 2  # the second run's result: never one without its run
    assert len(runs) == 2
    assert (worker.stats.retried, worker.stats.done, worker.stats.settle_failed) == (1, 1, 0)
    status = await ref.status()
    assert status.attempt == 2, "the run whose result was lost counted as an attempt"


async def wait_for_stats(condition: Any, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_outcome_records_of_jobs_that_end_together_go_to_the_store_in_shared_calls(app: App) -> None:
    store = app.results
    assert store is not None
    write_many = store.write_many
    calls: list[int] = []

    async def counted(writes: Any) -> None:
        calls.append(len(writes))
        await write_many(writes)

    store.write_many = counted  # type: ignore[method-assign]
    started: list[int] = []
    go = anyio.Event()

    @app.task(keep_result=60)
    async def together(n: int) -> int:
        started.append(n)
        await go.wait()
        return n

    refs = [await together.enqueue(n) for n in range(20)]
    async with running(app, concurrency=20, **FAST):
        with anyio.fail_after(10):
            while len(started) < 20:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        go.set()  # all twenty end at once
        assert [await ref.result(timeout=10) for ref in refs] == list(range(20))
    assert sum(calls) == 20, f"every record written once: {calls}"
    assert len(calls) < 20, f"records of jobs ending together shared calls: {calls}"
