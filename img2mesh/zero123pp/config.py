"""Configuration of the Zero123++ multi-view stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from img2mesh.zero123pp.weights import DEFAULT_MODEL, NORMAL_CONTROLNET
from recon.config import check_range


@dataclass
class MultiviewConfig:
    """How the six views are sampled."""

    model: str = DEFAULT_MODEL
    """Hugging Face hub id or local folder with the zero123plus repository layout."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of ``model``; None takes the default branch."""
    steps: int = 75
    """Denoising steps (the official examples use 75; ~28 is enough for simple objects)."""
    guidance: float = 4.0
    """Classifier-free guidance scale; 1.0 disables guidance (one UNet batch instead of two)."""
    scheduler: Literal["euler_ancestral", "euler", "ddim", "dpm_solver"] = "euler_ancestral"
    """Sampler; the reference uses Euler ancestral with trailing timestep spacing."""
    offload: bool = False
    """Model CPU offload: keep only the running component on the GPU (fits small cards, slower)."""
    compile: Literal["auto", "off", "graphs", "blocks+graphs"] = "auto"
    """Fast path of the denoising step on CUDA: "off", "graphs", "blocks+graphs" (fastest) or "auto".
    "graphs" replays CUDA graphs; "blocks+graphs" also compiles the UNet's blocks (a long first compile, cached on
    disk); "auto" is graphs, or blocks+graphs for batches that repay the compile."""
    normals: bool = False
    """Also run the v1.2 normal ControlNet, whose mattes become the masks (about twice the diffusion time).
    Its normal maps travel with the posed views."""
    normals_model: str = NORMAL_CONTROLNET
    """Hub id or local folder of the normal ControlNet (used when ``normals`` is on)."""
    lora: str | None = None
    """LoRA adapter from ``img2mesh train`` (its output folder); None runs ``model`` as is. A full fine-tune is a
    model folder: pass it as ``model``."""
    lora_merge: bool = True
    """Fold the adapter into the weights at load, so the fast path runs at the base model's speed. Off keeps it a
    separate branch (same maths, other rounding) and runs the step eagerly."""

    def validate(self) -> None:
        """Raise :class:`~recon.config.ConfigValueError` for the first value out of range."""
        check_range("steps", self.steps, 1, 1000)
        check_range("guidance", self.guidance, 0.0, 100.0)
