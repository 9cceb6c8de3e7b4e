"""Mesh export: GLB (PBR base colour), OBJ+MTL+PNG, PLY with vertex colours; glTF axes (+Y up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ExportConfig:
    """Mesh files written."""

    format: Literal["glb", "obj", "ply"] = "glb"
    """File format of the exported mesh."""
