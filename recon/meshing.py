"""Field → clean triangle mesh: marching cubes, keep the object, smooth, decimate, fix normals."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MeshConfig:
    """Mesh extraction and clean-up."""

    faces: int = 20000
    """Target face count after decimation."""
