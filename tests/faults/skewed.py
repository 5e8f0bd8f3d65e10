"""Run a module under a wall clock shifted by SKEW seconds: ``python skewed.py SKEW MODULE [ARGS...]``.

``time.time`` is replaced before anything else is imported, so everything asyncjobs stamps (the
envelope's times, retry due times, dead-letter times) comes from the shifted clock, as on a host
whose clock is wrong. The real clock stays reachable as ``time.unskewed_time`` (the ledger uses it).
"""

from __future__ import annotations

import runpy
import sys
import time

skew = float(sys.argv[1])
real = time.time
time.unskewed_time = real  # type: ignore[attr-defined]
time.time = lambda: real() + skew
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
