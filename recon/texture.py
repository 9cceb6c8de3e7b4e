"""Mesh → UV unwrap (xatlas) and base-colour texture baked from the posed views."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextureConfig:
    """UV unwrap and baking."""

    size: int = 1024
    """Side of the square base-colour texture in pixels."""
