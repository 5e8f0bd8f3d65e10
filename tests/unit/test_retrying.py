"""Backoff and classification: pure functions, checked without an event loop."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs.errors import ConfigError, EnvelopeError, JobTimeout, PermanentError, Retry
from asyncjobs.retrying import Backoff, RetryPolicy, classify, next_delay


@given(
    attempt=st.integers(1, 500),
    base=st.floats(0, 10),
    factor=st.floats(1, 4),
    extra=st.floats(0, 1000),
    jitter=st.floats(0, 1),
)
def test_backoff_stays_within_jitter_of_the_capped_exponential(
    attempt: int, base: float, factor: float, extra: float, jitter: float
) -> None:
    backoff = Backoff(base=base, factor=factor, cap=base + extra, jitter=jitter)
    raw = min(backoff.cap, base * factor ** (attempt - 1))
    delay = backoff.delay(attempt, random.Random(attempt))
    assert raw * (1 - jitter) - 1e-9 <= delay <= raw + 1e-9


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=1, factor=2, cap=5, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_spreads_retries_of_a_burst() -> None:
    backoff = Backoff(base=10, jitter=1.0)
    rng = random.Random(1)
    assert len({round(backoff.delay(1, rng), 3) for _ in range(50)}) > 40


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (Retry(), "retry"),
        (JobTimeout(), "retry"),
        (ConnectionResetError(), "retry"),
        (PermanentError(), "permanent"),
        (EnvelopeError(), "permanent"),
        (KeyError("x"), "retry"),
    ],
)
def test_default_classification(error: BaseException, verdict: str) -> None:
    assert classify(error, RetryPolicy()) == verdict


def test_per_task_map_wins_by_specificity() -> None:
    class PaymentDeclinedError(ValueError):
        pass

    policy = RetryPolicy(permanent_on=(ValueError,), retry_on=(PaymentDeclinedError,))
    assert classify(PaymentDeclinedError(), policy) == "retry"
    assert classify(ValueError(), policy) == "permanent"
    assert classify(RuntimeError(), RetryPolicy(retry_unknown=False)) == "permanent"


def test_retry_delay_overrides_backoff() -> None:
    assert next_delay(Retry(delay=7), 3, RetryPolicy()) == 7
    assert next_delay(RuntimeError(), 1, RetryPolicy(backoff=Backoff(base=2, jitter=0))) == 2


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"factor": 0.5}, {"base": 10, "cap": 1}, {"jitter": 2}])
def test_invalid_backoff_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)
