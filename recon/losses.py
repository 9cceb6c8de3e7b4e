"""The fit's loss terms, as plain functions of what a step renders and what the views show.

- photometric: Charbonnier (a smooth L1) between the rendered colour and the view's pixel composited on the step's
  random background, so the background colour cannot be explained by geometry and a few inconsistent pixels of a
  generated view pull no harder than many slightly wrong ones;
- silhouette: binary cross-entropy of the rendered opacity against the mask (whose outline pixels are soft, a
  tolerance of about a pixel: :mod:`recon.masks`);
- normal: ``1 − cos`` between the rendered and the views' normals (only when the views carry normal maps);
- the grid's priors (eikonal, Laplacian smoothness, colour total variation, volume and surface area) come from
  :class:`recon.sdf_grid.SdfGrid` and are weighted here.

Every function is free of host synchronisation, as the CUDA-graph-captured step requires (:mod:`recon.graph_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.sdf_grid import SdfGrid
from recon.volume_render import RayBatch, Rendered


@dataclass
class LossWeights:
    """Constant weights of one fit's terms (the scheduled ones come with each step)."""

    mask: float
    """Silhouette term."""
    eikonal: float
    """Eikonal term."""
    colour_smoothness: float
    """Colour total variation."""
    volume: float
    """Enclosed volume, per world unit³ (the config's weight divided by the hull's volume)."""
    area: float
    """Surface area, per world unit² (the config's weight divided by the initial surface's area)."""
    normal: float
    """Normal term (0: the views carry no normal maps)."""


def composited_target(batch: RayBatch, background: torch.Tensor) -> torch.Tensor:
    """The views' pixels (R, 3) composited over ``background`` (R, 3) with their masks."""
    return batch.rgb * batch.mask[:, None] + background * (1 - batch.mask[:, None])


def photometric(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Charbonnier distance between rendered and target colours (R, 3)."""
    return torch.sqrt((rendered - target) ** 2 + 1e-6).mean()


def silhouette(opacity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of rendered opacity (R,) against the mask (R,)."""
    return F.binary_cross_entropy(opacity.clamp(1e-4, 1 - 1e-4), mask)


def normal_error(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 − cos`` between rendered (R, 3) and target (R, 3) normals, each ray weighted by its target's length
    (the pixel's share of normal map: 0 on the background, so those rays do not count)."""
    share = target.norm(dim=-1)
    agreement = (F.normalize(rendered, dim=-1, eps=1e-6) * target).sum(-1)
    return (share - agreement).sum() / share.sum().clamp_min(1.0)


def fit_loss(
    grid: SdfGrid,
    out: Rendered,
    batch: RayBatch,
    background: torch.Tensor,
    gradient: torch.Tensor,
    band: float,
    weights: LossWeights,
    smoothness_weight: torch.Tensor,
    prior_weight: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total of one step and its data and regularity terms (undetached).

    ``band``: distance from the surface within which eikonal and smoothness count; ``smoothness_weight`` and
    ``prior_weight`` (0-d tensors) are this step's Laplacian weight and volume/area factor.
    """
    colour = photometric(out.rgb, composited_target(batch, background))
    mask = silhouette(out.opacity, batch.mask)
    eikonal, smooth = grid.eikonal_and_smoothness(band, gradient)
    loss = (
        colour
        + weights.mask * mask
        + weights.eikonal * eikonal
        + smoothness_weight * smooth
        + weights.colour_smoothness * grid.colour_tv()
        + prior_weight * (weights.volume * grid.volume() + weights.area * grid.surface_area(gradient))
    )
    terms = {"photometric": colour, "mask": mask, "eikonal": eikonal, "smoothness": smooth}
    if weights.normal > 0:
        normal = normal_error(out.normal, batch.normal)
        loss = loss + weights.normal * normal
        terms["normal"] = normal
    return loss, terms
