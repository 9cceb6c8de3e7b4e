"""What the ``img2mesh serve`` tests share: the example photo and polling (the settings are tests/stage_settings.py)."""

from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PHOTO = REPO / "examples" / "photos" / "spot.png"


def wait_for(check, timeout: float = 300.0, period: float = 0.2):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {check}")
