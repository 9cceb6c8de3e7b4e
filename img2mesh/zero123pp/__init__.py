"""Zero123++ (SUDO AI, 2023): our implementation of the multi-view diffusion stage on diffusers/transformers.

``from img2mesh.zero123pp import Zero123PlusPipeline`` works, but torch and diffusers load only on first use of a
heavy name, so importing the config (as the CLI does at start-up) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Zero123PlusPipeline": "img2mesh.zero123pp.pipeline",
    "Zero123PlusOutput": "img2mesh.zero123pp.pipeline",
    "resolve_model": "img2mesh.zero123pp.weights",
    "download_model": "img2mesh.zero123pp.weights",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
