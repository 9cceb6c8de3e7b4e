"""PyVista preview of exported meshes: interactive window, off-screen screenshot, turntable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PreviewConfig:
    """The preview image written next to the mesh."""

    enabled: bool = True
    """Write ``preview.png`` after export."""
    size: int = 768
    """Side of the square preview image in pixels."""
