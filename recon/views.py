"""PosedViews: the six Zero123++ views with their masks and cameras, the hand-off between 2D and 3D.

Conventions (world, camera, pixel) are those of :mod:`recon.cameras`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class PosedViews:
    """N views of one object, each with an RGB image, an alpha mask and a pinhole camera."""

    images: np.ndarray
    """RGB, float32 in [0, 1], shape (N, H, W, 3), sRGB values as the diffusion model produced them."""
    masks: np.ndarray
    """Alpha, float32 in [0, 1], shape (N, H, W); soft edges allowed."""
    intrinsics: np.ndarray
    """Pinhole intrinsics in pixels, shape (N, 3, 3)."""
    cam_to_world: np.ndarray
    """OpenGL camera-to-world matrices, shape (N, 4, 4)."""
    poses: str = "v1.2"
    """Which Zero123++ pose table the cameras come from ("v1.2", "v1.1", or "custom")."""
    normals: np.ndarray | None = None
    """Optional camera-space unit normals, float32 (N, H, W, 3), from the normal ControlNet when it ran."""

    def __post_init__(self) -> None:
        n, h, w = self.images.shape[:3]
        if self.images.shape != (n, h, w, 3):
            raise ValueError(f"images must be (N, H, W, 3), got {self.images.shape}")
        if self.masks.shape != (n, h, w):
            raise ValueError(f"masks must be {(n, h, w)}, got {self.masks.shape}")
        if self.intrinsics.shape != (n, 3, 3) or self.cam_to_world.shape != (n, 4, 4):
            raise ValueError("intrinsics must be (N, 3, 3) and cam_to_world (N, 4, 4)")
        if self.normals is not None and self.normals.shape != (n, h, w, 3):
            raise ValueError(f"normals must be {(n, h, w, 3)}, got {self.normals.shape}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every view."""
        return self.images.shape[1], self.images.shape[2]


@dataclass
class ViewsConfig:
    """How a grid becomes posed views."""

    poses: Literal["v1.2", "v1.1"] = "v1.2"
    """Which Zero123++ pose table the grid follows."""
    radius: float = 4.0
    """Camera distance from the origin (the object is assumed inside [-1, 1]^3)."""
