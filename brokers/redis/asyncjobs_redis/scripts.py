"""The Lua scripts, each one atomic state change, registered once per client (run by SHA)."""

from __future__ import annotations

from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_NAMES = (
    "enqueue",
    "fetch",
    "extend",
    "ack",
    "release",
    "retry",
    "dead_letter",
    "replay",
    "purge",
    "list_dead",
    "stats",
)


def source(name: str) -> str:
    """The text of script ``name``, with the shared prelude."""
    lua = files(__package__).joinpath("lua")
    return lua.joinpath("common.lua").read_text() + "\n" + lua.joinpath(f"{name}.lua").read_text()


class Scripts:
    """Every script of the broker, bound to one client.

    A script is sent by SHA; a server that does not know it (restarted, flushed) gets it loaded
    again on the spot, so a restart needs no action.
    """

    def __init__(self, client: Redis) -> None:
        loaded = {name: client.register_script(source(name)) for name in _NAMES}
        self.enqueue: AsyncScript = loaded["enqueue"]
        self.fetch: AsyncScript = loaded["fetch"]
        self.extend: AsyncScript = loaded["extend"]
        self.ack: AsyncScript = loaded["ack"]
        self.release: AsyncScript = loaded["release"]
        self.retry: AsyncScript = loaded["retry"]
        self.dead_letter: AsyncScript = loaded["dead_letter"]
        self.replay: AsyncScript = loaded["replay"]
        self.purge: AsyncScript = loaded["purge"]
        self.list_dead: AsyncScript = loaded["list_dead"]
        self.stats: AsyncScript = loaded["stats"]
