"""What the ``img2mesh serve`` tests share: the example photo, the smallest settings that run every stage, polling."""

from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PHOTO = REPO / "examples" / "photos" / "spot.png"

#: On top of the CPU preset: the smallest settings that still run every stage (as the batch tests use).
TINY = {
    "multiview.steps": 2,
    "preprocess.size": 128,
    "recon.image_size": 64,
    "recon.hull_resolution": 32,
    "recon.resolutions": [24],
    "recon.iterations": [8],
    "recon.rays": 512,
    "recon.samples": 24,
    "recon.colour_resolution": 16,
    "mesh.faces": 400,
    "texture.size": 64,
    "preview.size": 64,
}


def wait_for(check, timeout: float = 300.0, period: float = 0.2):
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {check}")
