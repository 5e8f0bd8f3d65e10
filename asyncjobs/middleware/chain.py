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

from asyncjobs.errors import BadOutcomeError
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
    """Compose ``middleware`` (outermost first) around ``innermost``.

    A layer without ``wrap`` is checked as it returns: anything but an :class:`Outcome` raises
    :class:`~asyncjobs.errors.BadOutcomeError` there, so the layers outside it see an error, not
    ``None``.
    """
    call = innermost
    for layer in reversed(middleware):
        wrap = getattr(layer, "wrap", None)
        call = wrap(call) if callable(wrap) else _checked(layer, call)
    return call


def not_an_outcome(layer: object, value: object) -> BadOutcomeError:
    """The error for ``layer`` returning ``value`` instead of an :class:`Outcome`."""
    name = layer if isinstance(layer, str) else f"middleware {type(layer).__qualname__}"
    return BadOutcomeError(f"{name} returned {value!r} instead of an Outcome (did it forget `return`?)")


def _checked(layer: Middleware, call_next: CallNext) -> CallNext:
    """``layer`` with its ``call_next`` bound, and its result checked."""

    async def call(job: Job) -> Outcome:
        outcome = await layer(job, call_next)
        if not isinstance(outcome, Outcome):
            raise not_an_outcome(layer, outcome)
        return outcome

    return call
