"""The photo of the warm-up job a server runs before its first real one: drawn here, so no file has to ship."""

from __future__ import annotations

import numpy as np
from PIL import Image


def warm_up_photo(size: int = 384) -> Image.Image:
    """A lit matte sphere on a transparent background: an object every stage accepts (a cut-out already)."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(coords, -coords)
    r2 = x**2 + y**2
    inside = r2 < 0.6**2
    z = np.sqrt(np.clip(0.6**2 - r2, 0, None)) / 0.6
    light = np.clip(0.3 + 0.7 * (x / 0.6 * -0.4 + y / 0.6 * 0.5 + z * 0.77), 0, 1)
    rgb = np.stack([0.85 * light, 0.45 * light, 0.2 * light], -1)
    rgba = np.concatenate([rgb, inside[..., None].astype(float)], -1)
    return Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA")
