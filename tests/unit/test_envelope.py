"""Envelope v1: round trips, unknown fields kept, bad input refused with EnvelopeError only."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncjobs.envelope as envelope_module
from asyncjobs.envelope import Envelope, decode, new_id, reads_back_equal
from asyncjobs.errors import EnvelopeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4),
)
def test_encode_then_decode_gives_the_same_envelope(args: list[object], kwargs: dict[str, object]) -> None:
    env = Envelope(task="t", args=tuple(args), kwargs=kwargs, key="k", timeout=3.5, headers={"traceparent": "x"})
    assert decode(env.encode()) == env


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_envelope_error(body: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(body)


@given(json_values)
def test_any_json_decodes_or_raises_envelope_error(doc: object) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(json.dumps(doc).encode())


def test_unknown_fields_are_kept_and_written_back() -> None:
    body = b'{"v":1,"id":"a","task":"t","producer":"billing-svc","priority":3}'
    env = decode(body)
    assert env.extra == {"producer": "billing-svc", "priority": 3}
    assert json.loads(env.encode())["producer"] == "billing-svc"


def test_minimal_foreign_envelope_gets_defaults() -> None:
    env = decode(b'{"v":1,"id":"a","task":"send_email","kwargs":{"to":"x@y"}}')
    assert (env.attempt, env.queue, env.args, env.kwargs) == (1, "default", (), {"to": "x@y"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"v":2,"id":"a","task":"t"}', "unsupported envelope version 2"),
        (b'{"v":1,"id":"a"}', "'task'"),
        (b'{"v":1,"id":"a","task":"t","args":"x"}', "'args'"),
        (b'{"v":1,"id":"a","task":"t","attempt":0}', "'attempt'"),
        (b'{"v":1,"id":"a","task":"t","attempt":true}', "'attempt'"),
        (b'{"v":1,"id":"a","task":"t","headers":{"a":1}}', "'headers'"),
    ],
)
def test_invalid_envelopes_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        decode(body)


@pytest.mark.parametrize("bad", [object(), float("nan"), float("inf"), {1j: 1}, b"bytes"])
def test_unserialisable_arguments_fail_at_enqueue_not_in_the_worker(bad: object) -> None:
    with pytest.raises(EnvelopeError, match="not JSON-serialisable"):
        Envelope(task="t", args=(bad,)).encode()


def test_arguments_with_a_cycle_fail_at_enqueue_with_a_clear_error() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(EnvelopeError, match="nested too deeply, or contain a cycle"):
        Envelope(task="t", args=(cycle,)).encode()


def test_new_ids_are_random_version_4_uuids() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (job_id, 4, uuid.RFC_4122)


any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # any size: orjson alone would read 19 digits and more as floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(value=any_json)
def test_parse_reads_every_document_as_the_standard_library_does(value: object) -> None:
    body = json.dumps(value).encode()
    for parsed in (envelope_module._parse(body), envelope_module._parse_stdlib(body)):  # orjson if installed
        assert parsed == json.loads(body)
        assert json.dumps(parsed) == json.dumps(value), "same types too (an int stays an int)"


@given(value=any_json)
def test_decode_gives_handlers_the_arguments_the_standard_library_reads(value: object) -> None:
    """Whatever the arguments hold (a long integer inside a list too), the handler gets exact values."""
    body = Envelope(task="t", args=(value, 7), kwargs={"k": value}).encode()
    expected = json.loads(body)
    for accelerated in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not accelerated:
                patch.setattr(envelope_module, "_orjson", None)
            env = decode(body)
        assert json.dumps(list(env.args)) == json.dumps(expected["args"]), "same values and types"
        assert json.dumps(env.kwargs) == json.dumps(expected["kwargs"])


@pytest.mark.parametrize(
    "args",
    [
        [123456789012345678901234567890],
        [-9223372036854775809, "x"],
        [[12345678901234567890123]],
        [{"n": 12345678901234567890123}, 1.5],
        ["12345678901234567890123"],
    ],
)
def test_decode_keeps_long_integers_exact(args: list[object]) -> None:
    env = decode(Envelope(task="t", args=tuple(args)).encode())
    assert list(env.args) == args
    assert [type(a) for a in env.args] == [type(a) for a in args]


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 123456789012345678901234567890}',
        b'{"a": -9223372036854775809}',
        b'{"a": NaN, "b": Infinity}',
        b'{"a": "\\ud800"}',
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": 1e400}',
        b"[1, 2] x",
        b"\xff",
    ],
)
@pytest.mark.parametrize("accelerated", [True, False])
def test_parse_agrees_with_the_standard_library_on_edge_cases(
    body: bytes, accelerated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not accelerated:
        monkeypatch.setattr(envelope_module, "_orjson", None)
    try:
        expected: object = json.dumps(json.loads(body.decode("utf-8")), allow_nan=False)  # NaN: refused
    except (ValueError, UnicodeDecodeError):
        expected = EnvelopeError
    try:
        got: object = json.dumps(envelope_module._parse(body))
    except EnvelopeError:
        got = EnvelopeError
    assert got == expected


def test_json_nested_too_deeply_is_an_envelope_error_not_a_crash() -> None:
    from asyncjobs.envelope import peek_id

    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(EnvelopeError, match="nested too deeply"):
        decode(b'{"v":1,"id":"x","task":"t","args":' + deep + b"}")
    assert peek_id(deep) is None


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ('"timeout": NaN', "NaN is not JSON"),
        ('"timeout": -1', "timeout"),
        ('"timeout": 0', "timeout"),
        ('"timeout": 1e400', "out of a float's range"),
        ('"not_before": -1e400', "out of a float's range"),
        ('"enqueued_at": 1e999', "out of a float's range"),
        ('"args": [Infinity]', "Infinity is not JSON"),
    ],
)
def test_numbers_that_are_not_finite_and_a_timeout_not_above_zero_are_refused(fields: str, why: str) -> None:
    """A foreign producer's NaN timeout would never fire; refused, the job is dead-lettered as malformed."""
    with pytest.raises(EnvelopeError, match=why):
        decode(f'{{"v": 1, "id": "x", "task": "t", {fields}}}'.encode())


@given(value=any_json)
def test_encode_writes_what_the_standard_library_writes(value: object) -> None:
    env = Envelope(task="t", args=(value,), kwargs={"k": value}, id="i", enqueued_at=1.5)
    expected = {"v": 1, "id": "i", "task": "t", "args": [value], "kwargs": {"k": value}}
    expected |= {"attempt": 1, "enqueued_at": 1.5, "queue": "default"}
    assert env.encode() == json.dumps(expected, separators=(",", ":"), allow_nan=False).encode()


class _Level(int):
    """An int subclass (as an IntEnum is): JSON reads it back as a plain int."""


class _Name(str):
    """A str subclass (as a StrEnum is): JSON reads it back as a plain str."""


scalar_values = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
)
any_values = st.recursive(
    scalar_values | st.builds(_Level, st.integers(0, 9)) | st.builds(_Name, st.text(max_size=4)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
mostly_scalars = st.one_of(scalar_values, scalar_values, scalar_values, any_values)
extra_fields = st.dictionaries(
    st.text(min_size=1, max_size=8) | st.sampled_from(["v", "id", "args", "history", "max_attempts"]),
    mostly_scalars,
    max_size=2,
)


@given(
    args=st.lists(mostly_scalars, max_size=3).map(tuple) | st.lists(mostly_scalars, max_size=2),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=6), mostly_scalars, max_size=3),
    extra=extra_fields,
    timeout=st.none() | st.floats(0.001, 1e6) | st.none() | st.integers(1, 100),
    not_before=st.none() | st.floats(0, 2e9) | st.none() | st.integers(0, 10),
    key=st.none() | st.text(max_size=5),
    headers=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_an_envelope_that_reads_back_equal_is_exactly_what_decoding_its_body_gives(
    args: tuple[object, ...],
    kwargs: dict[str, object],
    extra: dict[str, object],
    timeout: float | None,
    not_before: float | None,
    key: str | None,
    headers: dict[str, str],
) -> None:
    env = Envelope(
        task="t",
        args=args,
        kwargs=kwargs,
        extra=extra,
        timeout=timeout,
        not_before=not_before,
        key=key,
        headers=headers,
    )
    try:
        body = env.encode()
    except EnvelopeError:
        return
    if not reads_back_equal(env):
        return
    decoded = decode(body)
    assert decoded == env
    # Equal down to the type of every value: an enum or a tuple would come back as something else.
    for mine, theirs in [
        (env.args, decoded.args),
        (tuple(env.kwargs.values()), tuple(decoded.kwargs.values())),
        (tuple(env.extra.values()), tuple(decoded.extra.values())),
        ((env.timeout, env.not_before, env.enqueued_at), (decoded.timeout, decoded.not_before, decoded.enqueued_at)),
    ]:
        assert [type(v) for v in mine] == [type(v) for v in theirs]


@pytest.mark.parametrize(
    "env",
    [
        Envelope(task="t", args=([1, 2],)),  # a list: the handler could change it
        Envelope(task="t", kwargs={"to": {"a": 1}}),  # a dict
        Envelope(task="t", args=((1, 2),)),  # a tuple: JSON gives a list back
        Envelope(task="t", args=[1]),  # type: ignore[arg-type]  # args not a tuple
        Envelope(task="t", args=(_Level(3),)),  # an IntEnum comes back as a plain int
        Envelope(task="t", args=(_Name("a"),)),
        Envelope(task="t", timeout=5),  # type: ignore[arg-type]  # comes back as 5.0
        Envelope(task="t", extra={"v": 2}),  # a known field in extra: encode overwrites it
        Envelope(task="t", extra={"history": [{"attempt": 1}]}),
        Envelope(task="t", headers={"n": 1}),  # type: ignore[dict-item]  # decode refuses this
        Envelope(task="", args=(1,)),
    ],
    ids=[
        "list",
        "dict",
        "tuple",
        "args-list",
        "int-subclass",
        "str-subclass",
        "int-timeout",
        "known-extra",
        "history",
        "header-int",
        "no-task",
    ],
)
def test_envelopes_that_decoding_would_change_do_not_read_back_equal(env: Envelope) -> None:
    assert not reads_back_equal(env)


def test_plain_envelopes_read_back_equal() -> None:
    assert reads_back_equal(Envelope(task="t", args=(1, "a", 2.5, None, True), kwargs={"x": -1}))
    assert reads_back_equal(
        Envelope(
            task="t", timeout=3.0, not_before=1.5, key="k", headers={"traceparent": "x"}, extra={"max_attempts": 2}
        )
    )


@pytest.mark.parametrize("version", ["1.0", "true", '"1"', "1e0"])
def test_a_version_that_is_not_the_integer_1_is_refused(version: str) -> None:
    with pytest.raises(EnvelopeError, match="unsupported envelope version"):
        decode(f'{{"v":{version},"id":"a","task":"t"}}'.encode())
