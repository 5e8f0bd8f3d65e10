"""The key layout: every key of a queue shares the hash tag ``{PREFIX:QUEUE}``.

One hash slot per queue keeps each state change a single-slot script, the layout Redis Cluster
needs. See the package README for what each key holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

JOB_SUFFIXES = (
    "ready",
    "scheduled",
    "leased",
    "jobs",
    "tokens",
    "deliveries",
    "ready_since",
    "wake",
    "uniques",
    "missing",
)
"""Per-queue job keys, in the order every script receives them (see ``lua/common.lua``)."""

DEAD_SUFFIXES = ("dead", "dead:body", "dead:info", "dead:seq")
"""Per-queue dead-letter keys: ids by age, bodies, infos, and the counter that orders them."""


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Every key of one queue."""

    tag: str
    job: tuple[str, ...]
    dead: tuple[str, ...]

    @property
    def wake(self) -> str:
        """The list a blocked fetcher waits on."""
        return self.job[7]

    def request(self, owner: str) -> str:
        """What the last fetch or ack call of ``owner`` did, kept a lease length so a resend gets the same answer."""
        return f"{self.tag}:request:{owner}"

    def unique(self, key: str) -> str:
        """The string that holds an enqueue-time unique key while its TTL lasts."""
        return f"{self.tag}:unique:{key}"


@lru_cache(maxsize=1024)
def queue_keys(prefix: str, queue: str) -> QueueKeys:
    """The keys of ``queue`` under ``prefix``."""
    tag = f"{{{prefix}:{queue}}}"
    return QueueKeys(
        tag,
        tuple(f"{tag}:{suffix}" for suffix in JOB_SUFFIXES),
        tuple(f"{tag}:{suffix}" for suffix in DEAD_SUFFIXES),
    )


def job_id_of(handle: bytes) -> str | None:
    """The job id a stored job's handle (``JOB_ID|UNIQUE``) carries; ``None`` when it had none.

    Raises :class:`UnicodeDecodeError` when the id is not UTF-8 (a handle written by hand): that job
    cannot be named, and is dead-lettered as malformed by the consumer.
    """
    return handle.rpartition(b"|")[0].decode() or None
