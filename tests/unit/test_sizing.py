"""Sizing: distribution, recommendation and the findings that predict duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncjobs import sizing
from asyncjobs.errors import ConfigError


def test_distribution_percentiles() -> None:
    dist = sizing.Distribution.of(float(i) for i in range(1, 101))
    assert dist.count == 100
    assert dist.p50 == pytest.approx(50.5)
    assert dist.p99 == pytest.approx(99.01)
    assert dist.max == 100
    with pytest.raises(ConfigError):
        sizing.Distribution.of([])


def test_nice_ceil_rounds_up_to_config_values() -> None:
    assert sizing.nice_ceil(0.2) == 1
    assert sizing.nice_ceil(31) == 45
    assert sizing.nice_ceil(148) == 180
    assert sizing.nice_ceil(5000) == 7200


def test_the_design_example_is_flagged_as_duplicate_processing() -> None:
    """Processing 74 s, lease 30 s, heartbeat off, no idempotency key: duplicates on restart."""
    dist = sizing.Distribution.of([70.0, 72.0, 74.0])
    findings = sizing.check(dist, sizing.Settings(timeout=None, lease=30, heartbeat=0, keyed=False))
    errors = [f.message for f in findings if f.severity == "error"]
    assert len(errors) == 1 and "duplicate processing" in errors[0]
    assert not [
        f for f in sizing.check(dist, sizing.Settings(timeout=20, lease=30, heartbeat=0)) if f.severity == "error"
    ]
    warnings = " ".join(f.message for f in findings if f.severity == "warning")
    assert "idempotency key" in warnings
    assert "drain time 30s is shorter" in warnings


def test_heartbeats_on_with_a_fitting_timeout_and_keys_is_clean() -> None:
    dist = sizing.Distribution.of([70.0, 72.0, 74.0])
    rec = sizing.recommend(dist)
    assert rec.timeout == 180  # 2 x p99 (~147.9) rounded up
    assert rec.lease == 30 and rec.heartbeat == 10
    settings = sizing.Settings(timeout=rec.timeout, lease=rec.lease, heartbeat=None, drain=120, keyed=True)
    assert sizing.check(dist, settings) == []


def test_a_loop_stall_longer_than_the_lease_margin_is_an_error() -> None:
    dist = sizing.Distribution.of([1.0])
    settings = sizing.Settings(timeout=5, lease=30, keyed=True)
    errors = [f for f in sizing.check(dist, settings, max_stall=25.0) if f.severity == "error"]
    assert errors and "blocked the event loop" in errors[0].message
    assert sizing.recommend(dist, max_stall=25.0).lease >= 4 * 25


def test_timeouts_below_the_p99_are_warned() -> None:
    dist = sizing.Distribution.of([1.0] * 90 + [9.0] * 10)
    found = sizing.check(dist, sizing.Settings(timeout=5, keyed=True))
    assert any("will time out" in f.message for f in found)


def test_read_durations_accepts_numbers_and_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text('# recorded\n1.5\n{"duration": 2}\n\n')
    assert sizing.read_durations(path) == [1.5, 2.0]
    path.write_text("1\nabc\n")
    with pytest.raises(ConfigError, match=":2: not a duration"):
        sizing.read_durations(path)


def test_read_payloads(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('[1, 2]\n{"args": [3], "kwargs": {"x": 1}}\n')
    assert sizing.read_payloads(path) == [((1, 2), {}), ((3,), {"x": 1})]
    path.write_text('{"nope": 1}\n')
    with pytest.raises(ConfigError, match="expected a list"):
        sizing.read_payloads(path)
