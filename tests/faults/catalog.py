"""Every fault scenario by name: what ``python -m tests.faults --scenario NAME`` and the tests run."""

from __future__ import annotations

from tests.faults.scenarios import (
    Scenario,
    broker_faults,
    kill9_storm,
    paused_worker,
    poison_pill,
    rolling_deploy,
    sigterm_under_load,
)
from tests.faults.scenarios_node import node_restart
from tests.faults.scenarios_time import blocked_loop, clock_skew
from tests.faults.soak import soak

SCENARIOS: dict[str, Scenario] = {
    "sigterm": sigterm_under_load,
    "kill9": kill9_storm,
    "rolling": rolling_deploy,
    "pill": poison_pill,
    "pause": paused_worker,
    "faults": broker_faults,
    "block": blocked_loop,
    "skew": clock_skew,
    "soak": soak,
    "node": node_restart,
}

# Scenarios that apply to some brokers only (the others run on both).
ONLY_ON: dict[str, tuple[str, ...]] = {"node": ("amqp",)}
