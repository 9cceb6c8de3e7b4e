"""Posed views → signed-distance and colour fields → textured mesh: the reconstruction entry point."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReconConfig:
    """Field optimisation."""

    device: str = "auto"
    """Device of the optimisation ("auto", "cuda", "cpu")."""
