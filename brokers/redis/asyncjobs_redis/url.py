"""The broker URL: ``redis://[[user]:password@]host[:port][/db][?prefix=NAME&...]``, checked part by part.

Every part this package or redis-py reads is checked here, so a bad one is a one-line
:class:`~asyncjobs.errors.BrokerURLError` before anything connects, never a traceback or a silent
default. Errors show the URL through :func:`asyncjobs.broker.safe_url` (password masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from asyncjobs.broker import safe_url
from asyncjobs.errors import BrokerURLError

DEFAULT_PREFIX = "asyncjobs"
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_FETCH_BYTES = 8 * 1024 * 1024  # bodies per fetch reply, at most (but always one job)
OWN_PARAMETERS = ("prefix", "fetch_bytes")  # read here, not passed to redis-py


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A checked broker URL: what redis-py gets, and the parts this package reads."""

    client_url: str
    prefix: str
    socket_timeout: float
    fetch_bytes: int


def parse_url(url: str) -> RedisURL:
    """Check ``url`` and split it; :class:`BrokerURLError` names the bad part."""
    shown = safe_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, or out of range; a bad host
        raise BrokerURLError(f"{shown!r} is not a valid Redis URL ({exc}); expected redis://host:6379/0") from None
    if parts.scheme not in ("redis", "rediss"):
        raise BrokerURLError(f"not a Redis URL: {shown!r}; expected redis://host:6379/0 or rediss://...")
    if port == 0:
        raise BrokerURLError(f"port 0 in {shown!r}: give the server's port (6379 by default)")
    params = parse_qsl(parts.query, keep_blank_values=True)
    db_text = unquote(parts.path).strip("/")
    query_db = next((v for k, v in params if k == "db"), None)
    for text in (db_text, query_db):
        if text and not text.isdigit():
            raise BrokerURLError(f"database {text!r} in {shown!r} is not a number: use e.g. redis://host:6379/0")
    prefix = next((v for k, v in params if k == "prefix"), DEFAULT_PREFIX)
    if not prefix or any(c in prefix for c in "{}"):
        raise BrokerURLError(f"prefix={prefix!r} in {shown!r}: use a non-empty name without braces")
    timeout = _number(params, "socket_timeout", DEFAULT_SOCKET_TIMEOUT, float, shown, "a number of seconds")
    budget = int(_number(params, "fetch_bytes", DEFAULT_FETCH_BYTES, int, shown, "a number of bytes"))
    rest = [(k, v) for k, v in params if k not in OWN_PARAMETERS]
    return RedisURL(urlunsplit(parts._replace(query=urlencode(rest))), prefix, timeout, budget)


def _number(
    params: list[tuple[str, str]], name: str, default: float, kind: type[float] | type[int], shown: str, what: str
) -> float:
    text = next((v for k, v in params if k == name), None)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise BrokerURLError(f"{name}={text!r} in {shown!r} is not {what} (above 0)")
    return value
