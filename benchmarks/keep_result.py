"""``python -m benchmarks.keep_result``: what keeping results costs a worker's drain.

Enqueues ``--jobs`` jobs of a task that returns its argument, then times one worker (concurrency
``--concurrency``) draining them, with ``keep_result`` off and on, alternating, ``--repeat`` times
each. Prints the jobs/s of every run and the median of each mode.
"""

from __future__ import annotations

import inspect
import statistics
import time
import uuid

import anyio
import click

from asyncjobs import App, Worker, WorkerConfig


async def drain(url: str, jobs: int, concurrency: int, keep: float) -> tuple[float, float]:
    """Jobs per second of one drain of ``jobs`` jobs on a fresh namespace of ``url``, and the CPU
    microseconds per job this process spent (less sensitive to other load on the machine)."""
    name = f"ajbench-keep-{uuid.uuid4().hex[:8]}"
    broker_url = f"memory://{name}" if url == "memory" else f"{url}?prefix={name}"
    app = App(broker_url)
    # ``keep_result=0`` says "off" (the handler is annotated: the default would keep); without the
    # option at all (code before job handles), the same script times the drain as it was
    options = {"keep_result": keep} if "keep_result" in inspect.signature(app.task).parameters else {}
    done = 0
    finished = anyio.Event()

    @app.task(name="bench.echo", **options)  # type: ignore[call-overload,untyped-decorator,unused-ignore]
    async def echo(index: int) -> int:
        nonlocal done
        done += 1
        if done == jobs:
            finished.set()
        return index

    for start in range(0, jobs, 1000):
        await app.enqueue_many(echo, [echo.call(i) for i in range(start, min(start + 1000, jobs))])
    worker = Worker(app, WorkerConfig(concurrency=concurrency, shutdown_signals=False))
    async with anyio.create_task_group() as tg:
        began, cpu = time.perf_counter(), time.process_time()
        tg.start_soon(worker.run)
        await finished.wait()
        took, cpu = time.perf_counter() - began, time.process_time() - cpu
        worker.stop()
    if url != "memory":
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{{{name}:*", count=1000)]
        for chunk in range(0, len(keys), 500):
            await client.unlink(*keys[chunk : chunk + 500])
        await client.aclose()
        results = getattr(app, "results", None)
        if results is not None:
            await results.close()
    await app.broker.close()
    return jobs / took, cpu / jobs * 1e6


@click.command()
@click.option("--broker", default="memory", show_default=True, help="memory, or a redis:// URL.")
@click.option("--jobs", default=20_000, show_default=True)
@click.option("--concurrency", default=10, show_default=True)
@click.option("--repeat", default=3, show_default=True)
@click.option("--modes", default="off,on", show_default=True, help="off, on, or both (off,on).")
def main(broker: str, jobs: int, concurrency: int, repeat: int, modes: str) -> None:
    """Time a drain with keep_result off and on."""
    keeps = {"off": 0.0, "on": 3600.0}
    chosen = [m for m in modes.split(",") if m]
    figures: dict[str, list[tuple[float, float]]] = {m: [] for m in chosen}
    for _ in range(repeat):
        for mode in chosen:
            rate, cpu = anyio.run(drain, broker, jobs, concurrency, keeps[mode])
            figures[mode].append((rate, cpu))
            click.echo(f"keep_result {mode}: {rate:,.0f} jobs/s, {cpu:.1f} us CPU per job")
    for mode, runs in figures.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        click.echo(f"median keep_result {mode}: {rate:,.0f} jobs/s, {cpu:.1f} us CPU per job ({repeat} runs)")


if __name__ == "__main__":
    main()
