"""Tests on a Redis Cluster and a RabbitMQ cluster of the test's own (see ``tests/servers``).

The long form (the contract suite and the failover scenarios on both clusters) runs only with
``AJ_CLUSTER_TESTS=1``; the default run keeps one quick check (a Redis Cluster and a few contract
tests on it). See the README's "Running on a cluster".
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.contract import test_contract

LONG = os.environ.get("AJ_CLUSTER_TESTS", "") == "1"

long_form = pytest.mark.skipif(not LONG, reason="a cluster test of the long form: set AJ_CLUSTER_TESTS=1 to run it")


def contract_tests(names: set[str] | None = None) -> dict[str, Any]:
    """The contract suite's test functions (all, or those named), to be collected by a cluster module."""
    return {
        name: value
        for name, value in vars(test_contract).items()
        if name.startswith("test_") and callable(value) and (names is None or name in names)
    }
