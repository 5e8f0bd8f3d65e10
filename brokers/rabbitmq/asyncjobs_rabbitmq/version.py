"""What the connected server supports, read from the ``server_properties`` of the AMQP handshake."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The server's product, version and advertised capabilities.

    Feature flags are not visible over AMQP 0-9-1; the version stands in for them:

    * message TTL and at-least-once dead-lettering on quorum queues: 3.10 and later;
    * per-consumer and per-queue consumer timeout (``x-consumer-timeout``): 3.11.15 and later;
    * quorum queues get a default delivery limit of 20: 4.0 and later.
    """

    product: str = "RabbitMQ"
    version: tuple[int, int, int] = (0, 0, 0)
    capabilities: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_properties(cls, props: dict[str, Any] | None) -> ServerInfo:
        """Parse the ``server_properties`` table (missing or odd values give version 0.0.0)."""
        props = props or {}
        raw = props.get("version", "")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        numbers = [int(n) for n in re.findall(r"\d+", text)[:3]]
        numbers += [0] * (3 - len(numbers))
        caps = props.get("capabilities")
        product = props.get("product", "RabbitMQ")
        return cls(
            product=product.decode() if isinstance(product, bytes) else str(product),
            version=(numbers[0], numbers[1], numbers[2]),
            capabilities=dict(caps) if isinstance(caps, dict) else {},
        )

    @property
    def consumer_timeout_argument(self) -> bool:
        """Whether consumers and queues accept ``x-consumer-timeout`` (else only the global ``consumer_timeout``)."""
        return self.version >= (3, 11, 15)

    @property
    def quorum_delays(self) -> bool:
        """Whether quorum queues take ``x-message-ttl`` and at-least-once dead-lettering (3.10 and later)."""
        return self.version >= (3, 10, 0)

    @property
    def quorum_default_delivery_limit(self) -> int | None:
        """The delivery limit quorum queues get when none is declared (``None``: unlimited)."""
        return 20 if self.version >= (4, 0, 0) else None

    def describe(self) -> str:
        """``RabbitMQ 3.10.8`` for log lines."""
        return f"{self.product} {'.'.join(map(str, self.version))}"
