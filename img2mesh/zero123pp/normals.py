"""Normal maps and alpha mattes for the six views, from SUDO AI's normal-generation ControlNet for v1.2.

``sudo-ai/controlnet-zp12-normal-gen-v1`` is a plain diffusers ``ControlNetModel``. Zero123++ is run a second time
with the generated colour grid as control image: the ControlNet sees the sample, the timestep and the
prompt embeddings, has no reference attention, and its residuals go into the main UNet pass only. The result is a
grid of view-space normals encoded as colours (``n = rgb * 2 - 1``), with the background at the VAE's gray zero.

The length of the decoded vector says how "object" a pixel is (unit inside, ~0 on the gray background). The
reference post-processing (``examples/matting_postprocess.py`` of the zero123plus repository) turns that into a
trimap (sure foreground above 0.6, sure background below 0.2, both eroded by a 4x4 square) and solves closed-form
matting on the colour grid with pymatting, then renormalises the normals. This module does the same on the whole
grid, as the reference does, and hands back the mattes per view and the matted normal grid, which
:meth:`recon.posed_views.PosedViews.from_grid` splits with the colour grid and renormalises (the one split of each
grid; the reference's foreground-colour estimate is not made: nothing reads it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from img2mesh.zero123pp.weights import CONTROLNET_LAYOUT, NORMAL_CONTROLNET, resolve_model

log = logging.getLogger(__name__)


@dataclass
class NormalViews:
    """The mattes and the matted normal grid of one generated grid: what :meth:`PosedViews.from_grid` takes (the
    mattes as masks; the grid, split there with the colour grid, as the views' normal maps)."""

    alpha: np.ndarray
    """Alpha mattes in [0, 1], float32 (6, 320, 320)."""
    normal_grid: PIL.Image.Image
    """The 640x960 normal grid as colours, composited over 0.5 gray with the matte (the reference's normals.png)."""


def load_normal_controlnet(
    model: str | Path = NORMAL_CONTROLNET, torch_dtype: torch.dtype | None = None, revision: str | None = None
):
    """The normal ControlNet from a hub id (cache, fetched when online) or a folder; InputError when unavailable."""
    from diffusers import ControlNetModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    folder = resolve_model(model, revision, layout=CONTROLNET_LAYOUT)
    controlnet = ControlNetModel.from_pretrained(folder, torch_dtype=torch_dtype or torch.float32)
    controlnet.set_attn_processor(AttnProcessor2_0())  # what the reference installs: plain attention, no reference
    return controlnet


def generate_normal_grid(
    pipe,
    controlnet,
    image: PIL.Image.Image,
    grid: PIL.Image.Image,
    num_inference_steps: int = 75,
    guidance_scale: float = 4.0,
    generator: torch.Generator | None = None,
    conditioning_scale: float = 1.0,
) -> PIL.Image.Image:
    """The 640x960 normal grid for the colour ``grid`` that ``pipe`` generated from ``image``.

    Defaults follow the zero123plus example (guidance 4, 75 steps); its model card notes guidance 1 (one UNet batch,
    twice as fast) is usually good enough for normals.
    """
    controlnet.to(device=pipe._execution_device)
    out = pipe(
        image,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        controlnet=controlnet,
        control_image=grid,
        controlnet_conditioning_scale=conditioning_scale,
    )
    return out.images[0]


def matte_from_normals(
    color_grid: PIL.Image.Image,
    normal_grid: PIL.Image.Image,
    foreground: float = 0.6,
    background: float = 0.2,
    erosion: int = 4,
) -> NormalViews:
    """Alpha mattes and the matted normal grid from a colour grid and its normal grid."""
    from pymatting import estimate_alpha_cf
    from scipy.ndimage import binary_erosion

    from img2mesh.zero123pp.pipeline import composite_on_gray
    from recon.posed_views import split_grid

    vectors = np.asarray(normal_grid.convert("RGB"), dtype=np.float64) / 255.0 * 2 - 1
    length = np.linalg.norm(vectors, axis=-1)
    structure = np.ones((erosion, erosion), dtype=bool)
    sure_fg = binary_erosion(length > foreground, structure=structure)
    sure_bg = binary_erosion(length < background, structure=structure, border_value=1)
    trimap = np.full(length.shape, 0.5)
    trimap[sure_fg] = 1.0
    trimap[sure_bg] = 0.0

    color = np.asarray(composite_on_gray(color_grid), dtype=np.float64) / 255.0
    if sure_fg.any() and sure_bg.any():
        alpha = np.clip(estimate_alpha_cf(color, trimap), 0.0, 1.0)
    else:
        # Closed-form matting needs both sure regions; without one (a failed or degenerate normal grid) the
        # normal length itself, ramped between the two thresholds, is the best matte there is.
        log.warning("normal grid has no sure %s; using its normal length as the matte", "fg" if sure_bg.any() else "bg")
        alpha = np.clip((length - background) / (foreground - background), 0.0, 1.0)
    unit = vectors / (length[..., None] + 1e-8)
    shown = (unit * 0.5 + 0.5) * alpha[..., None] + 0.5 * (1 - alpha[..., None])
    return NormalViews(alpha=split_grid(alpha.astype(np.float32)), normal_grid=PIL.Image.fromarray(_to_uint8(shown)))


def generate_normals(pipe, controlnet, image: PIL.Image.Image, grid: PIL.Image.Image, **sampling) -> NormalViews:
    """Normal grid for ``grid`` (see :func:`generate_normal_grid` for ``sampling``), then its mattes and normals."""
    return matte_from_normals(grid, generate_normal_grid(pipe, controlnet, image, grid, **sampling))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(values * 255, 0, 255).astype(np.uint8)
