"""Requests that may be sent again after a lost reply, under the name they were first sent with.

A fetch or an ack whose reply was lost (the connection dropped, the socket timed out) may have
run on the server. Each such request carries a name; the script keeps what it did under that
name for a lease length (see ``lua/common.lua``). The consumer sends the same request again under
the same name, and the script answers as the first time instead of doing it twice: a fetch gets
the same leases back (no delivery counted twice), an ack reports the jobs it removed as acked.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable

MAX_PENDING = 64  # unanswered requests remembered at most (older ones expire on the server)


class Requests:
    """Names requests, remembers the ones whose reply was lost, and the records no longer needed."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._numbers = itertools.count(1)
        self._pending: OrderedDict[Hashable, tuple[str, str]] = OrderedDict()
        self._spent: list[str] = []

    def name(self, what: Hashable) -> tuple[str | None, str | None]:
        """The name and record key ``what`` was sent under before its reply was lost; ``(None, None)`` if new."""
        found = self._pending.get(what)
        return (None, None) if found is None else found

    def new_name(self) -> str:
        """A name no other request of this consumer has."""
        return f"{self._prefix}{next(self._numbers)}"

    def lost(self, what: Hashable, name: str, record: str) -> None:
        """``what``'s reply was lost: send it again under ``name`` (its record key is ``record``)."""
        self._pending[what] = (name, record)
        self._pending.move_to_end(what)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def answered(self, what: Hashable, record: str, kept: bool) -> None:
        """``what`` was answered; its record (if the server ``kept`` one) may go with the next request."""
        self._pending.pop(what, None)
        if kept:
            self._spent.append(record)

    def spent(self) -> list[str]:
        """Record keys to delete with the next request (handed out once)."""
        out, self._spent = self._spent, []
        return out
