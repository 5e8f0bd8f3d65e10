"""Requests that may be sent again after a lost reply, under the name they were first sent with.

A fetch or an ack whose reply was lost (the connection dropped, the socket timed out) may have
run on the server. Each call carries a request name; the script keeps what it did, with that
name, in the consumer's record key for a lease length (one key per consumer, kind and first
queue, overwritten by the next call). The consumer sends the failed request again under the same
name, and the script answers as the first time instead of doing it twice: a fetch gets the same
leases back (no delivery counted twice), an ack reports the jobs it removed as acked. When the
record holds another request's name (a later call overwrote it), the request is carried out
anew, which is always safe: a resent fetch leases only ready jobs, a resent ack reports as
removed only the jobs whose tokens still held.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable

MAX_PENDING = 64  # failed requests remembered at most (their records expire on the server)


class Requests:
    """Names requests and remembers the ones whose call failed, to send them again under their name."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._numbers = itertools.count(1)
        self._failed: OrderedDict[Hashable, str] = OrderedDict()

    def name(self, what: Hashable) -> tuple[str, bool]:
        """The name to send ``what`` under, and whether it is a resend of a failed call."""
        found = self._failed.pop(what, None)
        if found is not None:
            return found, True
        return f"{self._prefix}{next(self._numbers)}", False

    def failed(self, what: Hashable, name: str) -> None:
        """The call sending ``what`` under ``name`` failed: its reply may be lost, send it again so."""
        self._failed[what] = name
        self._failed.move_to_end(what)
        while len(self._failed) > MAX_PENDING:
            self._failed.popitem(last=False)
