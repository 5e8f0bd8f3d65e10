"""Tracing overhead: asyncjobs on memory:// with the tracing middleware and no OpenTelemetry SDK configured."""

from __future__ import annotations

from benchmarks.core import System

# TODO: filled in when asyncjobs/middleware/tracing.py lands.
SYSTEMS: list[type[System]] = []
