"""Retry policy: exponential backoff with jitter and a cap, and error classification.

Pure functions and frozen data: no I/O, no clock, so they are tested without an event loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from asyncjobs.errors import (
    ConfigError,
    EnvelopeError,
    JobTimeout,
    PermanentError,
    Retry,
    UnknownTaskError,
)

Verdict = Literal["retry", "permanent"]

DEFAULT_RETRYABLE: tuple[type[BaseException], ...] = (Retry, JobTimeout, ConnectionError, TimeoutError, OSError)
DEFAULT_PERMANENT: tuple[type[BaseException], ...] = (PermanentError, EnvelopeError, UnknownTaskError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt ``n + 1`` after attempt ``n`` failed: ``base * factor**(n-1)``, capped.

    ``jitter`` is the fraction of the delay drawn at random ("full jitter" at 1.0), so a burst of
    failures does not retry in lockstep.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base < 0:
            raise ConfigError(f"Backoff.base must be >= 0, got {self.base}")
        if self.factor < 1:
            raise ConfigError(f"Backoff.factor must be >= 1, got {self.factor}")
        if self.cap < self.base:
            raise ConfigError(f"Backoff.cap ({self.cap}) must be >= Backoff.base ({self.base})")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Backoff.jitter must be within [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        try:
            raw = min(self.cap, self.base * self.factor ** max(attempt - 1, 0))
        except OverflowError:
            raw = self.cap
        spread = raw * self.jitter
        return raw - spread + (rng or random).random() * spread


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which errors retry, and how.

    ``retry_on`` and ``permanent_on`` are checked in that order of specificity: the most derived
    matching class wins; when an error matches neither, ``retry_unknown`` decides. A ``Retry``
    raised by a handler always retries (its ``delay`` overrides the backoff).
    """

    max_attempts: int = 5
    backoff: Backoff = Backoff()
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRYABLE
    permanent_on: tuple[type[BaseException], ...] = DEFAULT_PERMANENT
    retry_unknown: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")


def classify(error: BaseException, policy: RetryPolicy) -> Verdict:
    """Decide whether ``error`` is worth another attempt under ``policy``."""
    if isinstance(error, Retry):
        return "retry"
    best: tuple[int, Verdict] | None = None
    for verdict, classes in (("permanent", policy.permanent_on), ("retry", policy.retry_on)):
        for cls in classes:
            if isinstance(error, cls):
                depth = len(cls.__mro__)
                if best is None or depth > best[0]:
                    best = (depth, verdict)  # type: ignore[assignment]
    if best is not None:
        return best[1]
    return "retry" if policy.retry_unknown else "permanent"


def next_delay(error: BaseException, attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds before the attempt after ``attempt``: the ``Retry`` delay if given, else backoff."""
    if isinstance(error, Retry) and error.delay is not None:
        return max(error.delay, 0.0)
    return policy.backoff.delay(attempt, rng)
