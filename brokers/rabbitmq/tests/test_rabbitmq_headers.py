"""Nothing a message or a handler contains can make the broker write a header frame that closes the connection.

RabbitMQ closes the whole connection on a frame over ``frame_max`` (131,072 here), which gives back
every unacked job of the worker. Foreign messages (published with raw aio-pika) with a 1 MB task
name, a 1 MB job id, a 1 MB foreign history and the largest header a producer can send, and
handlers raising 70 KB and 1 MB errors 1,000 frames deep: each ends in the dead letters with its
body intact, on the same connection, while good jobs beside them run once each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import anyio
import pytest
from asyncjobs_rabbitmq import RabbitBroker, wire
from asyncjobs_rabbitmq.publisher import HEADER_FRAME_LIMIT

from asyncjobs import App, PermanentError
from asyncjobs.broker import DeadLetterInfo
from asyncjobs.clock import wall_time
from asyncjobs.errors import BrokerError
from tests.harness import require_server
from tests.harness.rabbitmq import URL, rabbitmq_harness
from tests.runtime.helpers import eventually, running

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]
MB = 1_000_000
HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["quorum", "classic"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[RabbitBroker]:
    require_server("rabbitmq")
    async with rabbitmq_harness(f"h{uuid.uuid4().hex[:10]}", request.param) as connected:
        assert isinstance(connected, RabbitBroker)
        yield connected


def envelope(**fields: object) -> bytes:
    return json.dumps({"v": 1, "id": uuid.uuid4().hex, "args": [], "kwargs": {}, **fields}).encode()


def foreign_messages() -> list[tuple[bytes, dict[str, object]]]:
    """Bodies and headers a foreign producer may send."""
    return [
        (envelope(task="t" * MB), {}),
        (envelope(id="i" * MB, task="refuse"), {}),
        (envelope(task="nope", history=[{"error": "h" * MB}, {"error": "k" * MB}]), {}),
        (envelope(task="nope"), {"x-big": "v" * 130_000, wire.DUE: int((wall_time() + 1.5) * 1000)}),
    ]


async def publish_raw(queue: str, messages: list[tuple[bytes, dict[str, object]]]) -> None:
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for body, headers in messages:
            await channel.default_exchange.publish(aio_pika.Message(body, headers=headers or None), routing_key=queue)  # type: ignore[arg-type]
    finally:
        await connection.close()


def deep(n: int, size: int) -> None:
    if n:
        deep(n - 1, size)
    raise ValueError("x" * size)


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    """A worker process of ``rabbit_worker.py`` (concurrency 4)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent.parent), str(HERE.parent)])}
    args = [sys.executable, str(HERE / "rabbit_worker.py"), url, str(log), "4", "5"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE)


# -- bounds, without a server -----------------------------------------------------------------------


def test_a_long_job_id_becomes_a_short_marked_message_id_and_a_short_one_is_kept() -> None:
    assert wire.message_id("abc") == "abc"
    long = wire.message_id("é" * MB)
    assert long is not None and len(long.encode()) <= 255 and "…#" in long
    assert wire.message_id("é" * MB) == long, "the same id always gives the same message id"
    assert wire.message_id("é" * MB + "x") != long
    odd = wire.message_id("a\ud800b")
    assert odd is not None and odd.encode(), "a lone surrogate is never sent"


def test_dead_letter_header_stays_bounded_and_marked_whatever_it_holds() -> None:
    info = DeadLetterInfo(
        reason="r" * MB,
        error_type="E" * MB,
        error_message="😀" * MB,
        traceback="t" * MB,
        history=tuple({"error": "h" * MB, "n": i} for i in range(50)),
        task="t" * MB,
    )
    text = wire.dead_headers(info)[wire.DEAD]
    assert len(text) <= wire.DEAD_LIMIT
    doc = json.loads(text)
    assert doc["truncated"] is True and "characters cut" in doc["error_message"]
    assert DeadLetterInfo.from_json(doc).reason.startswith("r")
    small = DeadLetterInfo(reason="permanent", error_type="E", error_message="m", history=({"a": 1},))
    assert json.loads(wire.dead_headers(small)[wire.DEAD]) == small.to_json(), "small info is kept as it is"


def test_carried_headers_keep_small_ones_and_name_the_dropped_ones() -> None:
    carried = wire.carried_headers({"traceparent": "00-ab-cd-01", "x-big": "v" * 130_000, "x-death": [1]}, 2)
    assert carried is not None
    assert carried["traceparent"] == "00-ab-cd-01"
    assert "x-big" not in carried and carried[wire.CUT] == "x-big"
    assert carried[wire.PRIOR] == 2 and "x-death" not in carried


async def test_a_publish_with_oversize_headers_is_refused_before_it_reaches_the_server(broker: RabbitBroker) -> None:
    names = await broker.topology.ensure("default")
    connection = broker.connection.transport
    with pytest.raises(BrokerError, match="refused before sending"):
        await broker.publish([(names.work, b"x", wire.properties("x", {"h": "v" * HEADER_FRAME_LIMIT}))])
    await broker.publish([(names.work, b"y", wire.properties("y"))])
    assert broker.connection.transport is connection, "the connection was never closed"
    assert (await broker.stats("default")).ready == 1


# -- on the server, with a worker --------------------------------------------------------------------


async def test_hostile_messages_and_huge_errors_end_in_dead_letters_bodies_intact_on_one_connection(
    broker: RabbitBroker,
) -> None:
    app = App(broker)
    runs: dict[str, int] = {}

    @app.task(name="refuse")
    async def refuse() -> None:
        raise PermanentError("no")

    @app.task(name="loud", max_attempts=1)
    async def loud(size: int) -> None:
        deep(990, size)  # a traceback about 1,000 frames deep

    @app.task(name="quiet")
    async def quiet(name: str, seconds: float) -> None:
        runs[name] = runs.get(name, 0) + 1
        await anyio.sleep(seconds)

    names = await broker.topology.ensure("default")
    underlying = broker.connection.transport
    await quiet.enqueue("slow", 3.0)
    foreign = foreign_messages()
    await publish_raw(names.work, foreign)
    for size in (70_000, MB):
        await loud.enqueue(size)
    for i in range(20):
        await quiet.enqueue(f"q{i}", 0.0)
    async with running(app, concurrency=4, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 6 and worker.stats.done == 21, within=40)
    assert runs == {"slow": 1, **{f"q{i}": 1 for i in range(20)}}, "every good job ran once"
    assert broker.connection.transport is underlying, "the server never closed the connection"
    letters = await broker.list_dead("default", limit=10)
    bodies = {letter.body for letter in letters}
    assert {body for body, _ in foreign} <= bodies, "each foreign body is kept byte for byte"
    assert len(letters) == 6
    for letter in letters:
        assert len(letter.id.encode()) <= 255
        assert len(json.dumps(letter.info.to_json())) <= wire.DEAD_LIMIT + 100


async def test_a_worker_given_a_1mb_task_name_dead_letters_it_runs_the_rest_and_exits_on_sigterm(
    broker: RabbitBroker, tmp_path: Path
) -> None:
    prefix = broker.options.queue_prefix
    url = f"{URL}?queue_type={broker.options.queue_type}&queue_prefix={prefix}&connection_name={prefix}w"
    names = await broker.topology.ensure("jobs")
    log = tmp_path / "runs.log"
    bad = envelope(task="t" * MB)
    await publish_raw(names.work, [(bad, {})])
    good = [envelope(task="fault.sleepy", args=[0.0]) for _ in range(30)]
    await publish_raw(names.work, [(body, {}) for body in good])
    proc = start_worker(url, log)
    try:
        with anyio.fail_after(40):
            while log.read_text().count(" done ") < 30 if log.exists() else True:  # noqa: ASYNC110
                await anyio.sleep(0.1)
            while (await broker.stats("jobs")).dead < 1:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=15)) == 0, "the worker exits on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    starts = [line for line in log.read_text().splitlines() if line.startswith("start ")]
    assert len(starts) == 30, "each good job started once (a closed connection would have run some again)"
    [letter] = await broker.list_dead("jobs")
    assert letter.body == bad
