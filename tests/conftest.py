"""Shared fixtures: the anyio backend and per-broker harnesses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from asyncjobs.broker import Broker
from tests.harness import harnesses, require_server

BROKER_SERVER = {"redis": "redis", "rabbitmq": "rabbitmq"}


@pytest.fixture
def anyio_backend() -> str:
    """asyncjobs runs on asyncio."""
    return "asyncio"


@pytest.fixture(params=sorted(harnesses()))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A connected broker of each kind, isolated in a namespace of its own."""
    name: str = request.param
    if name in BROKER_SERVER:
        require_server(BROKER_SERVER[name])
    async with harnesses()[name](f"t{uuid.uuid4().hex[:12]}") as connected:
        yield connected


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Escape lone surrogates in a report's captured output (the hostile-message tests log some).

    A report of a test process under ``pytest -n`` travels as UTF-8, which cannot carry them.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [(name, _utf8(text)) for name, text in report.sections]
    if report.longrepr is not None:
        text = str(report.longrepr)
        if _utf8(text) != text:
            report.longrepr = _utf8(text)
    return None


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
