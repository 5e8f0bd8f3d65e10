"""The warning for a ``memory://`` broker that only receives: its jobs are lost when the process exits.

``memory://`` lives in one process. A producer script and a worker started separately, both
without ``$ASYNCJOBS_BROKER_URL``, each get a broker of their own: the producer's jobs are
accepted, never run, and gone when it exits. So the first enqueue to a memory broker on which
this process has opened no consumer logs a WARNING; and if at exit that broker still holds jobs
and never had a consumer, a :class:`RuntimeWarning` says how many were lost.
"""

from __future__ import annotations

import atexit
import logging
import warnings
from collections.abc import Callable

log = logging.getLogger("asyncjobs.memory")

HINT = (
    "memory:// lives in this process only, and a worker in another process gets a memory:// of its own: "
    "give producer and worker one broker (e.g. ASYNCJOBS_BROKER_URL=redis://127.0.0.1:6379/0), "
    "or run the worker in this process"
)


class ProducerOnlyWatch:
    """Watches one memory broker for enqueues that no consumer of this process will ever take."""

    def __init__(self, url: str, pending: Callable[[], int]) -> None:
        self.url = url
        self._pending = pending
        self.consumed = False
        self._warned = False

    def enqueued(self) -> None:
        """Called on every enqueue: warns once while no consumer was ever opened on the broker."""
        if self.consumed or self._warned:
            return
        self._warned = True
        log.warning("jobs enqueued to %s, on which this process runs no worker (yet): %s", self.url, HINT)
        atexit.register(self._at_exit)

    def consumer_opened(self) -> None:
        """A consumer was opened on the broker: its jobs can run here."""
        self.consumed = True

    def _at_exit(self) -> None:
        left = self._pending()
        if not self.consumed and left:
            warnings.warn(
                f"{left} jobs enqueued to {self.url} were never run and are lost as this process exits: {HINT}",
                RuntimeWarning,
                stacklevel=1,
            )
