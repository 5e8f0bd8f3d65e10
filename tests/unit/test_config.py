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
