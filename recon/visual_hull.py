"""The visual hull of posed views' masks, carved in torch on the fitting device: where the object can be.

The fit needs it three times: its signed distance starts the SDF grid, its extent along each pixel ray bounds where
that ray is sampled, and, dilated, it bounds the fitted surface (no floaters in space that no ray checks). A point is
occupied when it projects inside the masks of at least ``min_views`` views (voting tolerates a bad mask of a
generated view); a point outside a view's frame counts as empty there, since the object is always framed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from recon.cameras import project_points, sample_image
from recon.posed_views import PosedViews
from recon.sdf_grid import Box


@dataclass
class Hull:
    """The carved hull over the cube [-bound, bound]³ and what the fit derives from it."""

    occupied: torch.Tensor
    """(R, R, R) bool, laid out (Z, Y, X): the points inside the hull."""
    bound: float
    """Half-side of the cube the hull is carved in."""
    allowed: torch.Tensor
    """(1, 1, R, R, R) float: the hull dilated by two voxels, which the fitted surface may not leave (the surface may
    move a little outside a hull carved from area-resampled masks)."""

    @classmethod
    def carve(
        cls,
        views: PosedViews,
        bound: float,
        resolution: int,
        min_views: int,
        device: torch.device,
        dilation: float = 0.0,
    ) -> Hull:
        occupied = carve_hull(views, bound, resolution, min_views, device, dilation)
        allowed = F.max_pool3d(occupied.float()[None, None], kernel_size=5, stride=1, padding=2)
        return cls(occupied, bound, allowed)

    @property
    def cube(self) -> Box:
        """The cube [-bound, bound]³ the hull is carved in."""
        device = self.occupied.device
        return Box(torch.full((3,), -self.bound, device=device), torch.full((3,), self.bound, device=device))

    @property
    def voxel(self) -> float:
        """Spacing of the hull's grid points, world units."""
        return 2 * self.bound / (self.occupied.shape[0] - 1)

    @property
    def volume(self) -> float:
        """Volume of the hull, world units³."""
        return float(self.occupied.sum()) * self.voxel**3

    def signed_distance(self) -> torch.Tensor:
        """Signed distance to the hull's surface, ``(1, 1, R, R, R)`` over :attr:`cube`."""
        return occupancy_to_sdf(self.occupied, self.voxel)[None, None]

    def box(self, margin_voxels: float = 3) -> Box:
        """Bounding box of the hull grown by ``margin_voxels``: the box the SDF grid spans."""
        return hull_box(self.occupied, self.bound, margin_voxels * self.voxel)


def carve_hull(
    views: PosedViews, bound: float, resolution: int, min_views: int, device: torch.device, dilation: float = 0.0
) -> torch.Tensor:
    """Visual-hull occupancy (R, R, R) bool, laid out (Z, Y, X), over the cube [-bound, bound]³ (see the module).

    ``dilation`` > 0 grows every mask by that many pixels first, so that views misregistered by up to that much, all
    of them at once, still agree on a thin part (the vote forgives only whole views).
    """
    box = Box(torch.full((3,), -bound, device=device), torch.full((3,), bound, device=device))
    points = box.grid_points((resolution,) * 3).reshape(-1, 3)
    masks = torch.as_tensor(dilated_masks(views.masks, dilation), dtype=torch.float32, device=device)
    votes = torch.zeros(points.shape[0], device=device)
    for i in range(len(views)):
        uv, depth = project_points(points, views.intrinsics[i], views.cam_to_world[i])
        inside = sample_image(masks[i][None], uv)[:, 0] > 0.5
        votes += (inside & (depth > 0)).float()
    return (votes >= min_views).reshape((resolution,) * 3)


def dilated_masks(masks: np.ndarray, pixels: float) -> np.ndarray:
    """Masks (N, H, W) grown by ``pixels`` (a disc; binary at 0.5 when grown), unchanged for 0."""
    if pixels <= 0:
        return masks
    return np.stack([ndimage.distance_transform_edt(mask <= 0.5) <= pixels for mask in masks]).astype(np.float32)


def occupancy_to_sdf(occupied: torch.Tensor, voxel: float) -> torch.Tensor:
    """Signed Euclidean distance (world units, negative inside) of a boolean volume, exact at voxel precision.

    On a GPU it is computed there (:func:`squared_distance_to_zeros`), bit for bit what SciPy's transform gives on
    the host, without the round trip and the ~0.5 s that SciPy takes on one core at resolution 128."""
    if occupied.is_cuda and 0 < int(occupied.sum()) < occupied.numel():  # both sides present: all distances defined
        return torch_occupancy_to_sdf(occupied, voxel)
    occ = occupied.cpu().numpy()
    inside = ndimage.distance_transform_edt(occ)
    outside = ndimage.distance_transform_edt(~occ)
    sdf = (outside - inside + np.where(occ, 0.5, -0.5)) * voxel
    return torch.as_tensor(sdf, dtype=torch.float32, device=occupied.device)


def torch_occupancy_to_sdf(occupied: torch.Tensor, voxel: float) -> torch.Tensor:
    """:func:`occupancy_to_sdf` on ``occupied``'s device, for a volume with both occupied and empty voxels: the same
    float64 arithmetic as the SciPy path, so the same float32 result."""
    inside = squared_distance_to_zeros(occupied).double().sqrt()
    outside = squared_distance_to_zeros(~occupied).double().sqrt()
    return ((outside - inside + (occupied.double() - 0.5)) * voxel).float()


def squared_distance_to_zeros(mask: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """Exact squared Euclidean distance (int32, in voxels) from each element of ``mask`` to its nearest False element,
    0 on the False ones: SciPy's ``distance_transform_edt(mask) ** 2`` for a mask with at least one False element.

    The separable form of the exact transform: ``d(x) = min over y of |x - y|² + f(y)``, taken along each axis in
    turn, starting from f = 0 on the False elements and "infinity" on the others. Each pass compares every pair of
    elements of a line at once (n² per line: brute force, which a GPU does in milliseconds at n = 128), in chunks of
    lines of about ``chunk_elements`` pairs (64 MiB of int32 at the default: a small, reusable block of the
    allocator's). Integer throughout, so the square roots of the result are SciPy's.
    """
    far = 1 << 30  # beyond any squared distance in a grid under 2^14 a side; sums of it stay under 2^31
    dist = torch.where(mask, far, 0).to(torch.int32)
    for dim in range(mask.dim()):
        lines = dist.movedim(dim, -1)
        n = lines.shape[-1]
        steps = torch.arange(n, device=mask.device, dtype=torch.int32)
        square = (steps[:, None] - steps[None, :]) ** 2  # [x, y] = |x - y|²
        flat = lines.reshape(-1, n)
        out = torch.empty_like(flat)
        rows = max(1, chunk_elements // (n * n))
        for start in range(0, flat.shape[0], rows):
            part = flat[start : start + rows]
            out[start : start + rows] = (part[:, None, :] + square).amin(dim=-1).clamp_max(far)
        dist = out.reshape(lines.shape).movedim(-1, dim)
    return dist


def hull_box(occupied: torch.Tensor, bound: float, margin: float) -> Box:
    """Bounding box (world) of an occupancy cube over [-bound, bound]³, grown by ``margin``; the whole cube if empty."""
    device = occupied.device
    n = occupied.shape[0]
    idx = torch.nonzero(occupied)
    if idx.numel() == 0:
        return Box(torch.full((3,), -bound, device=device), torch.full((3,), bound, device=device))
    step = 2 * bound / (n - 1)
    lo_zyx, hi_zyx = idx.min(0).values.float(), idx.max(0).values.float()
    lo = (lo_zyx.flip(0) * step - bound - margin).clamp(min=-bound - margin)
    hi = (hi_zyx.flip(0) * step - bound + margin).clamp(max=bound + margin)
    return Box(lo, hi)
