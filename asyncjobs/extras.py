"""The distribution's name and its optional extras: the one place install commands are spelled.

The import package is ``asyncjobs``; the distribution is ``asyncjobs-runtime`` (the name
``asyncjobs`` on the package index belongs to another project). Every message that tells a user
what to install is built here, so it names an extra the distribution really declares.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "asyncjobs-runtime"

# extra -> what it adds (the import names checked by the packaging test).
EXTRAS: dict[str, tuple[str, ...]] = {
    "redis": ("redis",),
    "rabbitmq": ("aio_pika",),
    "otel": ("opentelemetry.sdk", "opentelemetry.exporter.prometheus", "prometheus_client"),
    "postgres": ("psycopg", "psycopg_pool"),
    "speedups": ("orjson",),
}


def install_command(extra: str) -> str:
    """The command that adds ``extra`` to an installed asyncjobs: ``pip install 'asyncjobs-runtime[redis]'``."""
    if extra not in EXTRAS:
        raise KeyError(f"no extra {extra!r}; extras: {', '.join(sorted(EXTRAS))}")
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a source tree that is not installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
