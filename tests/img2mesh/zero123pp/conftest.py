"""Fixtures of the Zero123++ tests: test photos (the tiny model is in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest


def make_photo(seed: int, size: int = 96) -> PIL.Image.Image:
    """An RGBA photo: a coloured disc on transparent background, with seeded colours and position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.3 * size) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, 3)
    rgba[..., :3] = np.clip(rgba[..., :3] + rng.integers(-40, 40, (size, size, 3)), 0, 255)
    rgba[..., 3] = np.where(inside, 255, 0)
    return PIL.Image.fromarray(rgba, "RGBA")


@pytest.fixture
def photo() -> PIL.Image.Image:
    return make_photo(0)


@pytest.fixture(name="make_photo")
def make_photo_fixture():
    """The :func:`make_photo` factory, for tests that need several distinct photos."""
    return make_photo
