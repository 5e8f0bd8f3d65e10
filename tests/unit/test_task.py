"""Enqueue-time argument checks: the positional shortcut agrees with ``inspect.Signature.bind``."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from asyncjobs.task import TaskOptions, TaskSpec

SIGNATURES = [
    "()",
    "(a)",
    "(a, b=1)",
    "(a, /, b, c=2)",
    "(*args)",
    "(a, *args)",
    "(a, *, k)",
    "(a, *, k=1)",
    "(a=1, b=2, **kw)",
    "(a, /, *args, k=3, **kw)",
]


def spec_for(signature: str) -> TaskSpec:
    namespace: dict[str, Any] = {}
    exec(f"async def handler{signature}: pass", namespace)
    handler = namespace["handler"]
    return TaskSpec("t", handler, TaskOptions(), inspect.signature(handler))


def binds(spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        spec.signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("signature", SIGNATURES)
@pytest.mark.parametrize("kwargs", [{}, {"k": 1}, {"a": 1}, {"b": 2}, {"zz": 0}])
def test_check_arguments_accepts_exactly_what_binds(signature: str, kwargs: dict[str, Any]) -> None:
    spec = spec_for(signature)
    for count in range(5):
        args = tuple(range(count))
        try:
            spec.check_arguments(args, kwargs)
            accepted = True
        except TypeError:
            accepted = False
        assert accepted == binds(spec, args, kwargs), (signature, args, kwargs)


def test_an_async_handler_behind_functools_wraps_is_accepted_and_a_sync_one_refused() -> None:
    import functools

    from asyncjobs import App, ConfigError

    app = App("memory://wraps")

    async def real(x: int) -> int:
        return x

    @functools.wraps(real)
    def wrapper(x: int) -> object:
        return real(x)

    assert app.task(name="wrapped")(wrapper).name == "wrapped"  # type: ignore[arg-type]

    def blocking() -> None: ...

    with pytest.raises(ConfigError, match="must be an 'async def' function"):
        app.task(blocking)  # type: ignore[arg-type]
