"""Messages from producers outside asyncjobs, written straight to the broker: each has a place to go.

Runs on every broker harness (memory://, and the real Redis and RabbitMQ servers).
"""

from __future__ import annotations

import json

import pytest

from asyncjobs import App, Broker
from asyncjobs.broker import OutgoingJob
from tests.runtime.helpers import eventually, running

pytestmark = pytest.mark.anyio


async def test_a_body_over_the_workers_size_limit_is_dead_lettered_intact_without_running(broker: Broker) -> None:
    app = App(broker, max_payload_bytes=10_000)
    runs: list[int] = []

    @app.task(name="echo")
    async def echo(text: str) -> None:
        runs.append(len(text))

    # A foreign producer knows nothing of the worker's limit: 50 KB of a valid envelope.
    big = json.dumps({"v": 1, "id": "big-1", "task": "echo", "args": ["x" * 50_000]}).encode()
    assert await broker.enqueue([OutgoingJob("big-1", "default", big)]) == [True]
    await echo.enqueue("small")
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == 1 and worker.stats.done == 1, within=15)
    assert runs == [5], "the oversize job never ran; the good one did"
    [dead] = await broker.list_dead("default")
    assert dead.body == big
    assert dead.info.reason == "too_large"
    assert "max_payload_bytes=10000" in dead.info.error_message
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, 1)


# The corpus: bodies a foreign producer (another language, redis-cli, a raw AMQP client) might
# send, each with the reason it must be dead-lettered with. Byte strings exactly as sent.
ESCAPES = b'{"v":1,"id":"esc\\u001b]0;owned\\u0007","task":"\\u001b[5m[link=http://x]t\\ud800"}'
CORPUS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "malformed"),
    ("not json", b"not json at all", "malformed"),
    ("truncated", b'{"v":1,"id":"trunc","task":"corpus.ok"', "malformed"),
    ("not utf-8", b"\xff\xfe\x00garbage\x80", "malformed"),
    ("an array", b"[1,2,3]", "malformed"),
    ("version 2", b'{"v":2,"id":"v2","task":"corpus.ok"}', "malformed"),
    ("version 1.0", b'{"v":1.0,"id":"v10","task":"corpus.ok"}', "malformed"),
    ("no id", b'{"v":1,"task":"corpus.ok"}', "malformed"),
    ("no task", b'{"v":1,"id":"notask"}', "malformed"),
    ("NaN", b'{"v":1,"id":"nan","task":"corpus.ok","args":[NaN]}', "malformed"),
    ("400 digits", b'{"v":1,"id":"bigtime","task":"corpus.ok","enqueued_at":' + b"9" * 400 + b"}", "malformed"),
    ("raw control bytes", b'{"v":1,"id":"raw\x1b[2J","task":"corpus.ok"}', "malformed"),
    ("deep nesting", b'{"v":1,"id":"deep","task":"corpus.ok","args":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "malformed"),
    ("unknown task", b'{"v":1,"id":"unknown","task":"corpus.nope"}', "unknown_task"),
    ("escapes and markup", ESCAPES, "unknown_task"),
    ("wrong arguments", b'{"v":1,"id":"badargs","task":"corpus.ok","args":[1,2,3]}', "permanent"),
    ("duplicate id, first", b'{"v":1,"id":"dup","task":"corpus.perm","args":[1]}', "permanent"),
    ("duplicate id, second", b'{"v":1,"id":"dup","task":"corpus.perm","args":[2]}', "permanent"),
    ("too large", b'{"v":1,"id":"big","task":"corpus.ok","args":["' + b"x" * 2_000_000 + b'"]}', "too_large"),
]


def cli(*args: str) -> tuple[int, str]:
    """``asyncjobs ARGS`` in this process (in a thread: the command runs an event loop of its own)."""
    from click.testing import CliRunner

    from asyncjobs.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


async def test_a_corpus_of_hostile_messages_each_lands_in_the_dead_letters_intact_beside_good_jobs(
    broker: Broker,
) -> None:
    import anyio

    from asyncjobs import PermanentError

    app = App(broker)
    ran: list[int] = []

    @app.task(name="corpus.ok", max_attempts=2)
    async def ok(n: int = 0) -> None:
        ran.append(n)

    @app.task(name="corpus.perm")
    async def perm(n: int) -> None:
        raise PermanentError(f"never {n}")

    for i, (_, body, _) in enumerate(CORPUS):
        assert await broker.enqueue([OutgoingJob(f"raw-{i}", "default", body)]) == [True]
        await ok.enqueue(i)  # a good job after each hostile one
    async with running(app, lease_seconds=10) as worker:
        await eventually(lambda: worker.stats.dead == len(CORPUS) and worker.stats.done == len(CORPUS), within=60)
        assert not worker.stopping, "the worker is alive"
    assert sorted(ran) == list(range(len(CORPUS))), "every good job ran once"
    letters = await broker.list_dead("default", limit=100)
    by_body: dict[bytes, list[str]] = {}
    for letter in letters:
        by_body.setdefault(letter.body, []).append(letter.info.reason)
    for name, body, reason in CORPUS:
        assert reason in by_body.get(body, []), f"{name}: dead-lettered intact as {reason}, got {by_body.get(body)}"
    assert len(letters) == len(CORPUS), "each message has its own dead letter (the duplicate id twice)"
    stats = await broker.stats("default")
    assert (stats.ready, stats.scheduled, stats.in_flight, stats.dead) == (0, 0, 0, len(CORPUS))

    # The operator's commands handle every letter and show every byte literally.
    url = broker.url
    code, out = await anyio.to_thread.run_sync(cli, "dead", "list", "-q", "default", "--broker", url, "--limit", "100")
    assert code == 0, out
    assert "\x1b" not in out and "\\x1b" in out and "[link=http://x]" in out
    for letter in letters:
        code, out = await anyio.to_thread.run_sync(cli, "dead", "show", letter.id, "-q", "default", "--broker", url)
        assert code == 0, f"dead show {letter.id!r}: {out[-2000:]}"
        assert "\x1b" not in out
    code, out = await anyio.to_thread.run_sync(cli, "dead", "replay", "--all", "-q", "default", "--broker", url)
    assert code == 0, out
    assert f"replayed {len(CORPUS)} dead letters" in out, out
    assert (await broker.stats("default")).ready == len(CORPUS)
    async with running(app, lease_seconds=10) as worker:  # dead again, each as before
        await eventually(lambda: worker.stats.dead == len(CORPUS), within=60)
    code, out = await anyio.to_thread.run_sync(cli, "dead", "purge", "--all", "-q", "default", "--broker", url)
    assert code == 0, out
    assert f"purged {len(CORPUS)} dead letters" in out, out
    assert (await broker.stats("default")).dead == 0
