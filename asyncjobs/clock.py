"""Time comes from here: monotonic for deadlines, wall clock for envelope timestamps."""

from __future__ import annotations

import time

monotonic = time.monotonic
"""Seconds on a clock that never goes back; use it for deadlines and durations."""

wall_time = time.time
"""Seconds since the epoch; use it for timestamps that cross processes (envelopes, records)."""
