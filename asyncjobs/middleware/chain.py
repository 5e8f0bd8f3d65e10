"""The middleware onion: each middleware wraps the next with ``async def __call__(job, call_next)``.

A middleware can wrap the rest of the chain in ``async with`` (a span, a cancel scope, a dedupe
claim), inspect or replace the :class:`~asyncjobs.job.Outcome`, or return one without calling
``call_next`` (a duplicate that must not run).

A middleware may also offer ``wrap(call_next)``, returning an ``async`` callable of the job alone
that does what ``__call__`` does: :func:`build_chain` then calls it directly, one Python call per
job fewer than binding ``call_next`` to ``__call__`` (see :class:`WrappingMiddleware`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from asyncjobs.job import Job, Outcome

CallNext = Callable[[Job], Awaitable[Outcome]]


class Middleware(Protocol):
    """One layer of the onion."""

    async def __call__(self, job: Job, call_next: CallNext) -> Outcome:
        """Process ``job``, normally by awaiting ``call_next(job)`` once."""
        ...


class WrappingMiddleware(Middleware, Protocol):
    """A middleware that can also be composed ahead of time, as the built-in layers are."""

    def wrap(self, call_next: CallNext) -> CallNext:
        """This layer around ``call_next``, as an ``async`` callable of the job alone."""
        ...


def build_chain(middleware: Sequence[Middleware], innermost: CallNext) -> CallNext:
    """Compose ``middleware`` (outermost first) around ``innermost``."""
    call = innermost
    for layer in reversed(middleware):
        wrap = getattr(layer, "wrap", None)
        call = wrap(call) if callable(wrap) else _Bound(layer, call)
    return call


class _Bound:
    """``layer`` with its ``call_next`` bound: calling it returns the layer's coroutine directly."""

    __slots__ = ("call_next", "layer")

    def __init__(self, layer: Middleware, call_next: CallNext) -> None:
        self.layer = layer
        self.call_next = call_next

    def __call__(self, job: Job) -> Awaitable[Outcome]:
        return self.layer(job, self.call_next)
