"""URLs and errors a user reads: a bad URL part is a one-line error with the password masked, a
refused password says so (and is not retried), an oversize job says it is too large."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from asyncjobs_redis import RedisBroker
from redis.asyncio import Redis

from asyncjobs.broker import OutgoingJob
from asyncjobs.errors import BrokerConnectionError, BrokerError, BrokerURLError, PayloadTooLargeError
from tests.servers.redis import redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1/zero", "database 'zero'"),
        ("redis://127.0.0.1:6379/0?db=one", "database 'one'"),
        ("redis://127.0.0.1:notaport/0", "not a valid Redis URL"),
        ("redis://127.0.0.1:99999/0", "not a valid Redis URL"),
        ("redis://127.0.0.1:0/0", "port 0"),
        ("redis://127.0.0.1:6379/0?socket_timeout=-1", "socket_timeout"),
        ("redis://127.0.0.1:6379/0?socket_timeout=nan", "socket_timeout"),
    ],
)
def test_a_bad_url_part_is_a_url_error_naming_it(url: str, message: str) -> None:
    with pytest.raises(BrokerURLError, match=message):
        RedisBroker(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@127.0.0.1:6394/0?prefix={x}",
        "redis://user:secret@127.0.0.1:notaport/0",
        "redis://:secret@127.0.0.1/zero",
        "redis://:secret@127.0.0.1:6379/0?fetch_bytes=lots",
    ],
)
def test_a_url_error_masks_the_password(url: str) -> None:
    with pytest.raises(BrokerURLError) as caught:
        RedisBroker(url)
    shown = str(caught.value)
    assert "secret" not in shown
    assert "***" in shown or "<url>" in shown, "shown through safe_url"


@pytest.mark.parametrize("url", ["redis://:secret@127.0.0.1:6394/0?prefix={x}", "redis://:secret@127.0.0.1:notaport/0"])
def test_the_cli_shows_a_bad_url_from_the_environment_in_one_line_without_its_password(url: str) -> None:
    env = {**os.environ, "ASYNCJOBS_BROKER_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "asyncjobs.cli", "dead", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_a_wrong_password_is_an_authentication_error_not_a_lost_server(tmp_path: Path) -> None:
    with redis_server(workdir=tmp_path) as server:
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        setter = Redis.from_url(server.url)
        await setter.config_set("requirepass", "right")  # this test's own server (its start-up check needs none)
        await setter.aclose()
        for url in (f"redis://:wrong@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"):
            broker = RedisBroker(url)
            with pytest.raises(BrokerError, match="authentication failed") as caught:
                await broker.connect()
            assert not isinstance(caught.value, BrokerConnectionError), "a refused password is not retried"
            assert "wrong" not in str(caught.value)
        good = RedisBroker(f"redis://:right@127.0.0.1:{port}/0")
        await good.connect()
        await good.close()


async def test_a_job_over_what_redis_takes_is_refused_as_too_large(tmp_path: Path) -> None:
    with redis_server(workdir=tmp_path) as server:
        broker = RedisBroker(server.url)
        huge = b"x" * (512 * 1024 * 1024 + 1)
        with pytest.raises(PayloadTooLargeError, match="too large"):
            await broker.enqueue([OutgoingJob("small", "q", b"{}"), OutgoingJob("huge", "q", huge)])
        del huge
        assert (await broker.stats("q")).ready == 0, "nothing of that call was enqueued"
        await broker.close()
