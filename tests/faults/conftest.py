"""Fixtures of the fault suite: each scenario runs once per broker and module; several tests read its report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from tests.faults.harness import Report
from tests.harness import require_server

_cache: dict[tuple[str, str], Report] = {}
LONG = os.environ.get("AJ_FAULTS_LONG", "") == "1"


def run_scenario(name: str, broker: str, factory: Any) -> Report:
    """The report of scenario ``name`` on ``broker`` (run on first use, then shared by the module's tests)."""
    require_server("postgres")
    require_server("redis" if broker == "redis" else "rabbitmq")
    if (name, broker) not in _cache:
        from tests.faults.catalog import SCENARIOS

        workdir = Path(factory.mktemp(f"{name}-{broker}"))
        _cache[name, broker] = anyio.run(SCENARIOS[name], broker, workdir, LONG)
        print(f"\n{name}/{broker}: {_cache[name, broker].as_dict()}")  # shown with -s / on failure
    return _cache[name, broker]


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """Keep each broker's fault scenarios in one test process (their reports are cached per process).

    Under ``pytest -n N`` (pytest-xdist, ``--dist loadgroup``) the redis:// and amqp:// scenarios then
    run side by side, each broker's one after another, while the other tests spread over the rest.
    """
    import pytest

    for item in items:
        if item.path.parent == Path(__file__).parent and hasattr(item, "callspec"):
            broker = item.callspec.params.get("broker")
            if broker is not None:
                item.add_marker(pytest.mark.xdist_group(f"faults-{broker}"))
