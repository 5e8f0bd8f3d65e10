"""``asyncjobs dead list/show/replay`` on hostile dead letters: everything shown literally, every letter handled."""

from __future__ import annotations

import uuid

import anyio
from click.testing import CliRunner

from asyncjobs.broker import DeadLetterInfo, OutgoingJob
from asyncjobs.cli import main
from asyncjobs.memory import MemoryBroker

HOSTILE_TASK = "\x1b]0;owned\x07[link=http://x]click[/link][red]\x1b[5mblink\ud800"
HOSTILE_ID = "id\x1b]8;;http://evil\x1b\\here\x1b]8;;\x1b\\"


def dead_letters(url: str) -> MemoryBroker:
    broker = MemoryBroker.from_url(url)

    async def fill() -> None:
        bodies = [
            (HOSTILE_ID, b'{"v":1,"id":"x","task":"t"}', HOSTILE_TASK),
            ("deep", b"[" * 100_000 + b"]" * 100_000, "t"),
            ("huge-time", b'{"v":1,"id":"huge-time","task":"t","enqueued_at":' + b"9" * 400 + b"}", "t"),
            ("plain", b'{"v":1,"id":"plain","task":"t"}', "t"),
        ]
        await broker.enqueue([OutgoingJob(job_id, "q", body) for job_id, body, _ in bodies])
        consumer = await broker.consumer(["q"], prefetch=10, lease_seconds=30)
        got = await consumer.fetch(10, 0.5)
        tasks = {job_id: task for job_id, _, task in bodies}
        for delivery in got:
            info = DeadLetterInfo("malformed", "EnvelopeError", "\x1b[2Jcleared", task=tasks[delivery.job_id or ""])
            assert await consumer.dead_letter(delivery, info)

    anyio.run(fill)
    return broker


def test_dead_list_shows_ids_and_task_names_literally() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    dead_letters(url)
    result = CliRunner().invoke(main, ["dead", "list", "-q", "q", "--broker", url])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output, "no escape sequence reaches the terminal"
    assert "\\x1b]0;owned" in result.output
    assert "[link=http://x]" in result.output, "markup is shown, not interpreted"
    assert "\\ud800" in result.output
    assert "huge-time" in result.output and "deep" in result.output


def test_dead_show_survives_deep_bodies_and_escapes_control_characters() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    dead_letters(url)
    for dead_id in ("deep", HOSTILE_ID, "huge-time"):
        result = CliRunner().invoke(main, ["dead", "show", dead_id, "-q", "q", "--broker", url])
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output


def test_dead_replay_all_handles_every_letter_and_reports_what_it_did() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    broker = dead_letters(url)
    result = CliRunner().invoke(main, ["dead", "replay", "--all", "-q", "q", "--broker", url])
    assert result.exit_code == 0, result.output
    assert "replayed 4 dead letters" in result.output
    assert anyio.run(broker.stats, "q").ready == 4


def test_log_lines_escape_control_characters_from_messages() -> None:
    import logging

    from asyncjobs.logsetup import LiteralFormatter

    record = logging.LogRecord("asyncjobs", logging.ERROR, __file__, 1, "job %s failed", (HOSTILE_ID,), None)
    line = LiteralFormatter("%(message)s").format(record)
    assert "\x1b" not in line
    assert "\\x1b]8;;http://evil" in line
