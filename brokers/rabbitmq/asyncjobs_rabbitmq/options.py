"""Broker options read from the URL: ``amqp://user:pass@host:port/vhost?queue_type=quorum&...``.

The options below are taken out of the query string; everything else (``heartbeat``,
``reconnect_interval`` (default here: 1 s), TLS options...) is passed on to the AMQP client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asyncjobs.broker import safe_url
from asyncjobs.errors import BrokerURLError

QUEUE_TYPES = ("quorum", "classic")
DEFAULT_CONSUMER_TIMEOUT = 86_400.0


@dataclass(frozen=True, slots=True)
class RabbitOptions:
    """How the broker names, declares and connects.

    * ``queue_type``: ``quorum`` (default; replicated, counts deliveries) or ``classic``.
    * ``queue_prefix``: prepended to every queue name this broker declares (isolation of apps/tests).
    * ``consumer_timeout``: seconds; sent as the consumer's ``x-consumer-timeout`` on servers
      that support it (3.11.15 and later). Must exceed the longest job.
    * ``connection_name``: shown by ``rabbitmqctl list_connections client_properties``.
    """

    amqp_url: str
    queue_type: str = "quorum"
    queue_prefix: str = ""
    consumer_timeout: float = DEFAULT_CONSUMER_TIMEOUT
    connection_name: str = "asyncjobs"

    @classmethod
    def from_url(cls, url: str) -> RabbitOptions:
        """Split ``url`` into the client's URL and this broker's options; bad values raise ``BrokerURLError``."""
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise BrokerURLError(f"RabbitMQ broker URL must start with amqp:// or amqps://, got {safe_url(url)!r}")
        try:
            parts.port  # noqa: B018 - it parses the port, or raises
        except ValueError:
            raise BrokerURLError(f"the port in the broker URL {safe_url(url)!r} is not a number from 1 to 65535") from None
        ours: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            (ours.__setitem__(key, value) if key in _OPTIONS else rest.append((key, value)))
        queue_type = ours.get("queue_type", "quorum")
        if queue_type not in QUEUE_TYPES:
            raise BrokerURLError(f"queue_type={queue_type!r} in the broker URL: use one of {', '.join(QUEUE_TYPES)}")
        try:
            timeout = float(ours.get("consumer_timeout", DEFAULT_CONSUMER_TIMEOUT))
        except ValueError:
            raise BrokerURLError(
                f"consumer_timeout={ours['consumer_timeout']!r} in the broker URL is not a number"
            ) from None
        if timeout <= 0:
            raise BrokerURLError(f"consumer_timeout={timeout} in the broker URL must be > 0 seconds")
        if not any(key == "reconnect_interval" for key, _ in rest):
            rest.append(("reconnect_interval", "1"))  # the client's default of 5 s leaves workers idle longer
        client_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
        return cls(
            amqp_url=client_url,
            queue_type=queue_type,
            queue_prefix=ours.get("queue_prefix", ""),
            consumer_timeout=timeout,
            connection_name=ours.get("connection_name", "asyncjobs") or "asyncjobs",
        )


_OPTIONS = frozenset({"queue_type", "queue_prefix", "consumer_timeout", "connection_name"})
