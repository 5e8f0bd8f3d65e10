"""The wire format of a job: a versioned JSON object (version 1).

Any producer that can write JSON can enqueue a job (``redis-cli``, another language). The
format is documented in ``docs/envelope.md``. Decoding is strict about what the runtime needs
and lenient about the rest: unknown fields are kept and written back unchanged, an unknown
version is refused with :class:`~asyncjobs.errors.EnvelopeError` (the worker dead-letters it).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from math import isfinite
from operator import itemgetter
from types import ModuleType
from typing import Any

from asyncjobs.clock import wall_time
from asyncjobs.errors import EnvelopeError


def _accelerator() -> ModuleType | None:
    """orjson when installed (``pip install 'asyncjobs-runtime[speedups]'``) and not turned off by ``ASYNCJOBS_STDLIB_JSON=1``."""
    if os.environ.get("ASYNCJOBS_STDLIB_JSON"):
        return None
    try:
        return importlib.import_module("orjson")
    except ImportError:
        return None


_orjson = _accelerator()

VERSION = 1
_KNOWN = frozenset(
    {
        "v",
        "id",
        "task",
        "args",
        "kwargs",
        "attempt",
        "enqueued_at",
        "not_before",
        "timeout",
        "key",
        "queue",
        "headers",
    }
)
_ALWAYS_NAMES = ("v", "id", "task", "args", "kwargs", "attempt", "enqueued_at", "queue")  # written for every job
_ALWAYS = frozenset(_ALWAYS_NAMES)
_ALWAYS_FIELDS = itemgetter(*_ALWAYS_NAMES)


def new_id() -> str:
    """Return a fresh job id: 32 lowercase hex digits, a random (version 4) UUID.

    The same as ``uuid.uuid4().hex`` without building a ``UUID`` object, at about a third of the cost.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


@dataclass(slots=True)
class Envelope:
    """One job as it travels through a broker.

    ``attempt`` starts at 1 and grows by one on each retry the runtime schedules; crash
    redeliveries are counted by the broker (``Delivery.delivery_count``) and added to it.
    Treat an envelope as a value: derive changed copies with :func:`dataclasses.replace`
    (it is not frozen only because building frozen instances costs time on the hot path).
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    queue: str = "default"
    attempt: int = 1
    enqueued_at: float = field(default_factory=wall_time)
    not_before: float | None = None
    timeout: float | None = None
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Serialise to compact UTF-8 JSON; unknown fields read earlier are written back."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            v=VERSION,
            id=self.id,
            task=self.task,
            args=list(self.args),
            kwargs=self.kwargs,
            attempt=self.attempt,
            enqueued_at=self.enqueued_at,
            queue=self.queue,
        )
        if self.not_before is not None:
            doc["not_before"] = self.not_before
        if self.timeout is not None:
            doc["timeout"] = self.timeout
        if self.key is not None:
            doc["key"] = self.key
        if self.headers:
            doc["headers"] = self.headers
        try:
            return _encode(doc).encode()
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"job {self.task!r}: arguments are not JSON-serialisable: {exc}") from exc
        except RecursionError:
            raise EnvelopeError(f"job {self.task!r}: arguments are nested too deeply, or contain a cycle") from None

    def next_attempt(self, not_before: float | None) -> Envelope:
        """The envelope of the following attempt, due at ``not_before`` (wall clock)."""
        return replace(self, attempt=self.attempt + 1, not_before=not_before)


def _check(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EnvelopeError(f"envelope field {name!r} has type {type(value).__name__}")
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)


def _c_encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode``, minus the set-up it repeats on every call: the C encoder, built once.

    ``JSONEncoder.encode`` builds a new C encoder (and a closure) for every document, which costs
    more than encoding a small job. The C encoder is built here with the same settings; without
    cycle detection, a cycle ends in ``RecursionError`` (refused like a too deeply nested value).
    Should this Python's ``json`` not offer it as expected, the plain ``encode`` is used.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    try:
        iterencode = make(
            None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
        )

        def encode(doc: Any) -> str:
            return "".join(iterencode(doc, 0))

        sample = {"a": [1, 2.5, "\u00e9", None, True, {"b": -(10**30)}], "c": "d"}
        if encode(sample) != _ENCODER.encode(sample):
            return _ENCODER.encode
    except Exception:
        return _ENCODER.encode
    return encode


_encode = _c_encoder()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the encoder refuses it too, so the job could not be retried)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not isfinite(value):
        raise ValueError(f"{text} is out of a float's range")
    return value


# The standard library's parser, made as strict as the encoder: no NaN or Infinity, no float that overflows.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(  # type: ignore[attr-defined]
    parse_constant=_refuse_constant, parse_float=_finite_float
).scan_once
_WHITESPACE = " \t\n\r"
# orjson reads integers of 19 digits or more as floats, where the standard library keeps them exact.
# Spotting such a run: every digit becomes "0" and everything else " ", then a plain substring search
# (C speed: a regular expression costs more than orjson's whole parse).
_DIGITS_ONLY = bytes(b"0"[0] if chr(i).isdigit() and i < 128 else b" "[0] for i in range(256))
_LONG_RUN = b"0" * 19
_EXACT = frozenset({str, int, bool, type(None)})  # argument types orjson reads as the standard library does


def _parse(body: bytes) -> Any:
    """Parse one JSON document exactly as ``json.loads`` would, as fast as this install allows.

    With orjson installed it parses what it can read the same way: every document it refuses
    (a lone surrogate, a byte order mark) and every one with a run of 19 digits goes to the
    standard library's parser, so both paths give the same value or the same error. Unlike
    ``json.loads``, both refuse ``NaN``, ``Infinity`` and numbers too large for a float: what is
    accepted can be encoded again.
    """
    if _orjson is not None and _LONG_RUN not in body.translate(_DIGITS_ONLY):
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass
    return _parse_stdlib(body)


def _parse_stdlib(body: bytes) -> Any:
    """``json.loads`` for one document, without its per-call set-up."""
    try:
        text = body.decode()
        doc, end = _scan(text, len(text) - len(text.lstrip(_WHITESPACE)))
    except StopIteration as exc:
        raise EnvelopeError(f"message is not JSON: expecting a value at char {exc.value}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnvelopeError(f"message is not JSON: {exc}") from exc
    except RecursionError:
        raise EnvelopeError("message is not an envelope: its JSON is nested too deeply to read") from None
    if end != len(text) and text[end:].strip(_WHITESPACE):
        raise EnvelopeError(f"message is not JSON: extra data at char {end}")
    return doc


def decode(body: bytes) -> Envelope:
    """Parse ``body`` into an :class:`Envelope` or raise :class:`EnvelopeError` saying why.

    With orjson installed the body is parsed by orjson first. Its reading differs from the standard
    library's in one way only: an integer of 19 digits or more may come back as a float. So its
    document is used as it is when the job's arguments hold only strings, integers, booleans and
    ``None`` (no float or container that such an integer could hide in), or when the body has no run
    of 19 digits; otherwise the body is read again by the standard library (see :func:`_parse`).
    """
    if _orjson is None:
        doc, exact = _parse_stdlib(body), True
    else:
        try:
            doc, exact = _orjson.loads(body), False
        except _orjson.JSONDecodeError:  # what orjson refuses (a lone surrogate): read, or refused, as stdlib does
            doc, exact = _parse_stdlib(body), True
    if type(doc) is not dict:
        raise EnvelopeError("message is not a JSON object")
    if doc.keys() == _ALWAYS:  # what the encoder writes for a job with no options: check it in one go
        version, job_id, task, args, kwargs, attempt, enqueued_at, queue = _ALWAYS_FIELDS(doc)
        if (
            type(version) is int  # exact types: a bool is an int, but it is no version or attempt
            and version == VERSION
            and type(task) is str
            and task
            and type(job_id) is str
            and job_id
            and type(args) is list
            and type(kwargs) is dict
            and type(queue) is str
            and type(attempt) is int
            and attempt >= 1
            and type(enqueued_at) is float
        ) and (
            exact
            or (_EXACT.issuperset(map(type, args)) and _EXACT.issuperset(map(type, kwargs.values())))
            or _LONG_RUN not in body.translate(_DIGITS_ONLY)
        ):
            return Envelope(task, tuple(args), kwargs, job_id, queue, attempt, enqueued_at)
    if not exact and _LONG_RUN in body.translate(_DIGITS_ONLY):
        doc = _parse_stdlib(body)  # orjson may have read an integer of 19 digits or more as a float
    return _decode_checked(doc)


def _decode_checked(doc: dict[str, Any]) -> Envelope:
    """:func:`decode` for any document: each field checked in turn, so an error names the field."""
    get = doc.get
    version = get("v")
    if type(version) is not int or version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version!r} (this worker reads {VERSION})")
    task, job_id = get("task"), get("id")
    if type(task) is not str or not task or type(job_id) is not str or not job_id:
        raise EnvelopeError("envelope needs non-empty string fields 'id' and 'task'")
    args, kwargs, queue, attempt = get("args", ()), get("kwargs", {}), get("queue", "default"), get("attempt", 1)
    if type(args) is not list:
        _check(args, (list, tuple), "args")
    if type(kwargs) is not dict:
        _check(kwargs, dict, "kwargs")
    if type(queue) is not str:
        _check(queue, str, "queue")
    if type(attempt) is not int:
        _check(attempt, int, "attempt")
    if attempt < 1:
        raise EnvelopeError("envelope field 'attempt' must be >= 1")
    enqueued_at = get("enqueued_at")
    if enqueued_at is not None and type(enqueued_at) is not float:
        enqueued_at = float(_check(enqueued_at, (int, float), "enqueued_at"))
    headers = get("headers")
    if headers is None:
        headers = {}
    elif type(headers) is not dict or not all(type(k) is str and type(v) is str for k, v in headers.items()):
        raise EnvelopeError("envelope field 'headers' must map strings to strings")
    not_before, timeout = get("not_before"), get("timeout")
    if not_before is not None and type(not_before) is not float:
        not_before = float(_check(not_before, (int, float), "not_before"))
    if timeout is not None:
        if type(timeout) is not float:
            timeout = float(_check(timeout, (int, float), "timeout"))
        if not timeout > 0:
            raise EnvelopeError(f"envelope field 'timeout' must be a number of seconds > 0, got {timeout}")
    key = get("key")
    if key is not None and type(key) is not str:
        _check(key, str, "key")
    extra = {k: v for k, v in doc.items() if k not in _KNOWN} if not _KNOWN.issuperset(doc) else {}
    return Envelope(
        task,
        tuple(args),
        kwargs,
        job_id,
        queue,
        attempt,
        enqueued_at or 0.0,
        not_before,
        timeout,
        key,
        headers,
        extra,
    )


_SCALARS = frozenset({str, int, float, bool, type(None)})  # immutable, and JSON gives each back equal
_FLOAT_OR_NONE = frozenset({float, type(None)})
_STR = frozenset({str})


def reads_back_equal(env: Envelope) -> bool:
    """Whether decoding ``env.encode()`` gives an envelope equal to ``env`` that shares nothing mutable with it.

    True when every argument, keyword argument and extra field is a plain ``str``, ``int``,
    ``float``, ``bool`` or ``None`` (exact types: JSON turns a tuple into a list and an enum into
    its value) and every other field has the type decoding gives it. A broker that keeps jobs in
    this process may then hand ``env`` itself to the worker instead of the bytes to parse.
    Assumes ``env.encode()`` succeeded (it refuses NaN, infinities and values JSON cannot hold).
    """
    args, kwargs, headers, extra, timeout = env.args, env.kwargs, env.headers, env.extra, env.timeout
    if type(args) is not tuple or not _SCALARS.issuperset(map(type, args)) or type(kwargs) is not dict:
        return False
    if kwargs and not (_all_str(kwargs) and _SCALARS.issuperset(map(type, kwargs.values()))):
        return False
    if type(headers) is not dict or (headers and not (_all_str(headers) and _all_str(headers.values()))):
        return False
    if type(extra) is not dict or (extra and not _plain_extra(extra)):
        return False
    return (
        type(env.task) is str
        and type(env.id) is str
        and type(env.queue) is str
        and type(env.attempt) is int
        and type(env.enqueued_at) is float
        and type(env.not_before) in _FLOAT_OR_NONE
        and (timeout is None or (type(timeout) is float and timeout > 0))
        and (env.key is None or type(env.key) is str)
        and env.attempt >= 1
        and env.task != ""
        and env.id != ""
    )


def _all_str(values: Iterable[Any]) -> bool:
    return _STR.issuperset(map(type, values))


def _plain_extra(extra: dict[str, Any]) -> bool:
    return _all_str(extra) and _KNOWN.isdisjoint(extra) and _SCALARS.issuperset(map(type, extra.values()))


def peek_id(body: bytes) -> str | None:
    """Best-effort job id of a message that may not decode; ``None`` when there is none."""
    try:
        doc = _parse(body)
    except EnvelopeError:
        return None
    job_id = doc.get("id") if isinstance(doc, dict) else None
    return job_id if isinstance(job_id, str) else None
