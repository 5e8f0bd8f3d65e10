"""``asyncjobs worker --workers N``: N worker processes under one supervisor (one process uses one core).

The supervisor starts N copies of the worker command, each in a process group of its own (so a
Ctrl-C in the terminal reaches the supervisor only, which forwards it once). A worker that dies
is started again after a backoff that doubles while it keeps dying soon after start (from
``RESTART_MIN`` to ``RESTART_MAX`` seconds) and resets once one ran ``STABLE_SECONDS``.
SIGTERM/SIGINT is forwarded to every worker, which drains; a second signal is forwarded too
(the workers stop at once). Workers still running ``drain + STOP_MARGIN`` seconds after the first
signal are killed. The exit code is 0 when every worker stopped cleanly. On Linux each worker also
gets SIGTERM when the supervisor itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

RESTART_MIN = 0.5
RESTART_MAX = 30.0
STABLE_SECONDS = 30.0
STOP_MARGIN = 4.0  # seconds past the drain time after which a worker that did not stop is killed
POLL = 0.1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send this process SIGTERM when its parent dies (best effort elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(slots=True)
class _Slot:
    """One of the N places: the process in it, when it started, and the backoff of its next restart."""

    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN
    restart_at: float = 0.0


class Supervisor:
    """Runs ``command`` ``count`` times and keeps it so until a signal; see the module docstring."""

    def __init__(self, command: Sequence[str], count: int, drain_seconds: float) -> None:
        self.command = list(command)
        self.slots = [_Slot() for _ in range(count)]
        self.drain_seconds = drain_seconds
        self._signals: list[int] = []

    @property
    def pids(self) -> list[int]:
        """The pids of the running workers."""
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def _start(self, slot: _Slot) -> None:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        slot.proc = subprocess.Popen(self.command, process_group=0, preexec_fn=preexec)
        slot.started = time.monotonic()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Supervise until a signal stops every worker; the exit code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self._start(slot)
            log.info("supervising %d worker processes: pids %s", len(self.slots), " ".join(map(str, self.pids)))
            while not self._signals:
                self._tend()
                time.sleep(POLL)
            return self._stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _tend(self) -> None:
        """Restart the workers that died, each after its backoff."""
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.poll() is not None:
                lived = now - slot.started
                slot.backoff = RESTART_MIN if lived >= STABLE_SECONDS else slot.backoff
                slot.restart_at = now + slot.backoff
                log.warning(
                    "worker pid %d exited with code %s after %.1fs; starting another in %.1fs",
                    proc.pid,
                    proc.returncode,
                    lived,
                    slot.backoff,
                )
                slot.backoff = min(slot.backoff * 2, RESTART_MAX)
                slot.proc = None
            if slot.proc is None and now >= slot.restart_at:
                self._start(slot)
                assert slot.proc is not None
                log.info("worker pid %d started", slot.proc.pid)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    def _stop(self) -> int:
        """Forward the signal, wait for the drain (forwarding a second signal), kill what is left."""
        first = self._signals[0]
        log.warning("received %s: stopping %d workers", signal.Signals(first).name, len(self.pids))
        self._forward(first)
        forwarded = 1
        deadline = time.monotonic() + self.drain_seconds + STOP_MARGIN
        while self.pids and time.monotonic() < deadline:
            if len(self._signals) > forwarded:  # a second signal: the workers stop at once
                self._forward(self._signals[forwarded])
                forwarded = len(self._signals)
                deadline = min(deadline, time.monotonic() + STOP_MARGIN)
            time.sleep(POLL)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.error("worker pid %d did not stop in time: killed", slot.proc.pid)
                slot.proc.kill()
                slot.proc.wait()
        codes = [slot.proc.returncode for slot in self.slots if slot.proc is not None]
        log.info("all workers stopped (exit codes %s)", " ".join(map(str, codes)))
        return 0 if all(code == 0 for code in codes) else 1
