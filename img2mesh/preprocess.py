"""Input photo → square RGBA cut-out with the object centred at a fixed share of the side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class PreprocessConfig:
    """How an input photo becomes the condition image."""

    remove_bg: Literal["auto", "rembg", "none"] = "auto"
    """Background removal: "auto" keeps an existing alpha and runs rembg otherwise; "none" uses the photo as is."""
    object_share: float = 0.85
    """Share of the square's side taken by the object's longer bounding-box side."""
    size: int = 512
    """Side of the square cut-out in pixels."""
