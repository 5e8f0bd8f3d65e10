"""What the OpenTelemetry messaging conventions say about a broker, read from its URL.

``messaging.system`` (``redis``, ``rabbitmq``, ``memory``), ``server.address`` and ``server.port``
(the URL's host and port, or the scheme's default port), and the destination a queue has on the
broker: on ``amqp://`` the RabbitMQ queue name, which carries the URL's ``queue_prefix``; on
``redis://`` and ``memory://`` the queue's own name. Passwords and other URL parts are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

_SYSTEMS = {"redis": "redis", "rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq", "memory": "memory"}
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


@dataclass(frozen=True, slots=True)
class Messaging:
    """The messaging-convention facts of one broker."""

    system: str = "unknown"
    server_address: str | None = None
    server_port: int | None = None
    queue_prefix: str = ""

    def destination(self, queue: str) -> str:
        """``messaging.destination.name`` of ``queue``: its name on the broker."""
        return f"{self.queue_prefix}{queue}"

    def attributes(self) -> dict[str, str | int]:
        """``messaging.system`` and, for a broker reached over the network, ``server.address``/``server.port``."""
        found: dict[str, str | int] = {"messaging.system": self.system}
        if self.server_address:
            found["server.address"] = self.server_address
            if self.server_port is not None:
                found["server.port"] = self.server_port
        return found


@lru_cache(maxsize=64)
def messaging_for(broker_url: str) -> Messaging:
    """The :class:`Messaging` facts of a broker URL (cached: it is read on every traced enqueue)."""
    scheme = broker_url.partition("://")[0].lower()
    system = _SYSTEMS.get(scheme, scheme or "unknown")
    if scheme not in _DEFAULT_PORTS:
        return Messaging(system)
    try:
        parts = urlsplit(broker_url)
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is not a number: the broker refuses the URL itself
        return Messaging(system)
    prefix = ""
    if system == "rabbitmq":
        prefix = next((value for key, value in parse_qsl(parts.query) if key == "queue_prefix"), "")
    return Messaging(system, host or "localhost", port, prefix)


def messaging_system(broker_url: str) -> str:
    """The ``messaging.system`` value for a broker URL (its scheme, or the conventional name)."""
    return messaging_for(broker_url).system
