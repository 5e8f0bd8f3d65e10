"""Worker configuration: a frozen dataclass, validated when it is built and against the tasks.

Lease length, heartbeat interval and timeouts are related: the heartbeat must come well before
the lease runs out, and a job with heartbeats off must finish within one lease. Contradictions
are refused with a message that names the field, the value and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from asyncjobs.errors import ConfigError
from asyncjobs.task import TaskSpec


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a worker runs.

    * ``concurrency``: jobs running at once. ``prefetch``: leases held at once, running or fetched
      and waiting to run (default: twice the concurrency, so the next jobs are already here when
      runners free up; set it to ``concurrency`` for long jobs, so none wait behind them).
    * ``lease_seconds``: each lease's length; ``heartbeat_seconds``: how often every held lease is
      extended in one batch (default lease/3; ``0`` turns heartbeats off).
    * ``drain_seconds``: on shutdown, how long running jobs may finish before being cancelled and
      given back.
    * ``stall_seconds``: an event-loop stall longer than this is logged with the job that
      caused it.
    """

    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    prefetch: int | None = None
    lease_seconds: float = 30.0
    heartbeat_seconds: float | None = None
    drain_seconds: float = 30.0
    fetch_wait_seconds: float = 1.0
    stall_seconds: float = 0.5
    shutdown_signals: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(bool(self.queues) and all(self.queues), f"queues must be non-empty names, got {self.queues!r}")
        need(self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}")
        need(self.prefetch is None or self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}")
        need(self.lease_seconds > 0, f"lease_seconds must be > 0, got {self.lease_seconds}")
        need(self.drain_seconds >= 0, f"drain_seconds must be >= 0, got {self.drain_seconds}")
        need(self.stall_seconds > 0, f"stall_seconds must be > 0, got {self.stall_seconds}")
        need(self.fetch_wait_seconds > 0, f"fetch_wait_seconds must be > 0, got {self.fetch_wait_seconds}")
        beat = self.heartbeat
        need(beat >= 0, f"heartbeat_seconds must be >= 0 (0 turns heartbeats off), got {beat}")
        need(
            beat == 0 or beat <= self.lease_seconds / 2,
            f"heartbeat_seconds={beat} leaves no margin within lease_seconds={self.lease_seconds}: "
            f"use a heartbeat of at most lease/2 (lease/3 is the default)",
        )

    @property
    def heartbeat(self) -> float:
        """Seconds between two batched lease extensions (``0``: off)."""
        return self.lease_seconds / 3 if self.heartbeat_seconds is None else self.heartbeat_seconds

    @property
    def leases_held(self) -> int:
        """How many leases the worker holds at most (running plus waiting to run)."""
        return self.prefetch or 2 * self.concurrency

    def check_tasks(self, tasks: Iterable[TaskSpec]) -> None:
        """Refuse task timeouts this configuration cannot cover.

        With heartbeats off, a job's lease is never extended, so every task needs a timeout
        shorter than the lease; otherwise a healthy job would be redelivered while it runs.
        """
        if self.heartbeat > 0:
            return
        for spec in tasks:
            timeout = spec.options.timeout
            if timeout is None or timeout >= self.lease_seconds:
                raise ConfigError(
                    f"task {spec.name!r} has timeout={timeout} but heartbeats are off and "
                    f"lease_seconds={self.lease_seconds}: the lease would expire while the job runs. "
                    f"Turn heartbeats on, or set a timeout below the lease"
                )
