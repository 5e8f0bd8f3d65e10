"""``dead list/show`` and ``stats``: the app's queues without -q, --json, whole ids in a pipe, "no such queue"."""

from __future__ import annotations

import json
import uuid

import anyio
from click.testing import CliRunner

from asyncjobs.broker import DeadLetterInfo, OutgoingJob
from asyncjobs.cli import main
from asyncjobs.memory import MemoryBroker

LONG_ID = "invoice-" + "7" * 80  # longer than any terminal column would show


def broker_with_a_dead_letter(queue: str) -> str:
    """A memory:// URL whose broker holds one dead letter (``LONG_ID``) in ``queue``."""
    url = f"memory://{uuid.uuid4().hex}"
    broker = MemoryBroker.from_url(url)

    async def fill() -> None:
        await broker.enqueue([OutgoingJob(LONG_ID, queue, b'{"v":1,"id":"x","task":"mail.send"}')])
        consumer = await broker.consumer([queue], prefetch=1, lease_seconds=30)
        (delivery,) = await consumer.fetch(1, 0.5)
        assert await consumer.dead_letter(delivery, DeadLetterInfo("permanent", "Bounce", "no such mailbox", task="mail.send"))

    anyio.run(fill)
    return url


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_dead_show_finds_the_letter_in_the_apps_queues_without_q() -> None:
    url = broker_with_a_dead_letter("mail")
    code, out = cli("dead", "show", LONG_ID, "--app", "tests.cli.mail_app:app", "--broker", url)
    assert code == 0, out
    doc = json.loads(out)
    assert (doc["id"], doc["queue"], doc["error_type"]) == (LONG_ID, "mail", "Bounce")
    code, out = cli("dead", "show", LONG_ID, "--app", "tests.cli.mail_app:app", "--broker", url, "--json")
    assert code == 0 and len(out.strip().splitlines()) == 1 and json.loads(out)["envelope"]["task"] == "mail.send"


def test_dead_show_of_an_unknown_id_names_the_queues_it_searched() -> None:
    url = broker_with_a_dead_letter("mail")
    code, out = cli("dead", "show", "nope", "--app", "tests.cli.mail_app:app", "--broker", url)
    assert code == 1
    assert "no dead letter 'nope' in queue 'mail', 'reports'" in out


def test_dead_list_in_a_pipe_and_as_json_shows_whole_ids() -> None:
    url = broker_with_a_dead_letter("mail")
    code, out = cli("dead", "list", "--app", "tests.cli.mail_app:app", "--broker", url)
    assert code == 0, out
    header, row = out.strip().splitlines()
    assert header.split("\t")[:3] == ["id", "queue", "task"]
    assert row.split("\t")[:3] == [LONG_ID, "mail", "mail.send"]
    code, out = cli("dead", "list", "-q", "mail", "--broker", url, "--json")
    (doc,) = [json.loads(line) for line in out.strip().splitlines()]
    assert (doc["id"], doc["queue"], doc["reason"], doc["attempts"]) == (LONG_ID, "mail", "permanent", 0)


def test_stats_json_covers_every_queue_of_the_app_and_reads_a_declared_empty_one_as_zeros() -> None:
    url = broker_with_a_dead_letter("mail")
    code, out = cli("stats", "--app", "tests.cli.mail_app:app", "--broker", url, "--json")
    assert code == 0, out
    docs = [json.loads(line) for line in out.strip().splitlines()]
    assert [(d["queue"], d["ready"], d["dead"]) for d in docs] == [("mail", 0, 1), ("reports", 0, 0)]


def test_a_queue_that_does_not_exist_is_no_such_queue_not_zeros() -> None:
    url = broker_with_a_dead_letter("mail")
    for command in (["stats"], ["dead", "list"], ["dead", "show", LONG_ID]):
        code, out = cli(*command, "-q", "mial", "--broker", url)
        assert code == 1, (command, out)
        assert "no such queue 'mial'" in out
