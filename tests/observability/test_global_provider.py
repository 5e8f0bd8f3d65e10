"""With an SDK tracer provider installed globally, apps and workers trace without being told to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_global_sdk_provider_turns_tracing_on_for_default_apps_and_workers() -> None:
    script = Path(__file__).with_name("global_tracing_script.py")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "traced: send default -> process default" in result.stdout
