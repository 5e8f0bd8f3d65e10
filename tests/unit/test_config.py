"""Worker configuration: contradictions are refused with a message naming the field and the fix."""

from __future__ import annotations

import pytest

from asyncjobs import App, ConfigError, WorkerConfig
from asyncjobs.broker import from_url
from asyncjobs.errors import BrokerURLError


def test_defaults_heartbeat_at_a_third_of_the_lease() -> None:
    assert WorkerConfig(lease_seconds=30).heartbeat == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": 10, "heartbeat_seconds": 8}, "heartbeat_seconds=8"),
        ({"queues": ()}, "queues"),
        ({"drain_seconds": -1}, "drain_seconds"),
    ],
)
def test_contradictory_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkerConfig(**kwargs)  # type: ignore[arg-type]


def test_timeout_the_lease_cannot_cover_without_heartbeats_is_refused() -> None:
    app = App("memory://config-test")

    @app.task(name="long", timeout=120)
    async def long() -> None:
        return None

    config = WorkerConfig(lease_seconds=30, heartbeat_seconds=0)
    with pytest.raises(ConfigError, match=r"timeout=120.*heartbeats are off"):
        config.check_tasks(app.tasks.values())
    WorkerConfig(lease_seconds=30).check_tasks(app.tasks.values())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:6379", "has no scheme"),
        ("sqs://queue", "no broker handles URL scheme 'sqs'"),
    ],
)
def test_bad_broker_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(BrokerURLError, match=message):
        from_url(url)


def test_handlers_must_be_async() -> None:
    app = App("memory://config-test")
    with pytest.raises(ConfigError, match="async def"):
        app.task(lambda: None)  # type: ignore[arg-type]


def test_a_worker_serves_the_queues_of_its_tasks_by_default() -> None:
    from asyncjobs import App
    from asyncjobs.cli import task_queues

    app = App("memory://queues-default")
    assert task_queues(app) == ("default",)

    @app.task(queue="email")
    async def send() -> None: ...

    @app.task(queue="billing")
    async def charge() -> None: ...

    assert task_queues(app) == ("billing", "email")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@127.0.0.1:6394/0?prefix=x", "redis://:***@127.0.0.1:6394/0?prefix=x"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqp://[::1]:5672/", "amqp://[::1]:5672/"),
        ("redis://u:p@[::1]:1/0", "redis://u:***@[::1]:1/0"),
        ("memory://", "memory://"),
        ("redis://:pw@host:notaport/0", "redis://:***@host:notaport/0"),
    ],
)
def test_a_url_is_never_shown_with_its_password(url: str, shown: str) -> None:
    from asyncjobs.broker import safe_url

    assert safe_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("amqp://guest:secret@127.0.0.1:notaport/", "amqp://guest:***@127.0.0.1:notaport/"),
        ("amqp://guest:p%40ss@[::1]:5672/vh?x=1", "amqp://guest:***@[::1]:5672/vh?x=1"),
        ("amqp://guest@127.0.0.1/", "amqp://guest@127.0.0.1/"),
        ("memory://", "memory://"),
    ],
)
def test_safe_url_masks_the_password_even_when_another_part_is_bad(url: str, shown: str) -> None:
    from asyncjobs.broker import safe_url

    assert safe_url(url) == shown
    assert "secret" not in safe_url(url)


def test_an_amqp_url_with_a_bad_port_is_a_one_line_error_without_the_password() -> None:
    pytest.importorskip("asyncjobs_rabbitmq")
    from asyncjobs.broker import from_url
    from asyncjobs.errors import BrokerURLError

    with pytest.raises(BrokerURLError, match="port") as caught:
        from_url("amqp://guest:secret@127.0.0.1:notaport/")
    assert "secret" not in str(caught.value)
