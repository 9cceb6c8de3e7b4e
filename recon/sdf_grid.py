"""Dense signed-distance and colour grids over the object's box: the fields the reconstruction optimises.

One bounded object needs no hashing: a dense 128³ SDF grid plus a coarser colour grid is a few tens of megabytes,
and ``F.grid_sample`` interpolates it with one fused native kernel on the CPU and the GPU alike, forward and
backward, so the whole optimiser stays pure PyTorch. The grid spans the visual hull's bounding box (padded) with
cubic voxels, so flat or elongated objects spend the resolution where they are.

Grid tensors are laid out ``(1, C, Z, Y, X)`` as ``grid_sample`` wants; :meth:`SdfGrid.sdf_xyz` gives ``[x, y, z]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.cameras import project_points, sample_image
from recon.posed_views import PosedViews


@dataclass
class Box:
    """An axis-aligned box in world space, and the cubic-voxel grid over it."""

    lo: torch.Tensor
    """Minimum corner (3,), world units."""
    hi: torch.Tensor
    """Maximum corner (3,), world units."""

    def shape(self, resolution: int) -> tuple[int, int, int]:
        """Grid points (Z, Y, X) along each axis for ``resolution`` points along the longest side (cubic voxels)."""
        extent = (self.hi - self.lo).tolist()
        longest = max(extent)
        nx, ny, nz = (max(4, round((resolution - 1) * e / longest) + 1) for e in extent)
        return nz, ny, nx

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) to ``grid_sample`` coordinates in [-1, 1] (x, y, z order)."""
        return (points - self.lo) / (self.hi - self.lo) * 2 - 1

    def grid_points(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """World positions (Z, Y, X, 3) of a grid's points (corners included, as ``align_corners=True`` reads)."""
        axes = [
            torch.linspace(float(self.lo[i]), float(self.hi[i]), n, device=self.lo.device)
            for i, n in zip((2, 1, 0), shape, strict=True)
        ]
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([x, y, z], dim=-1)

    def to(self, device: torch.device) -> Box:
        return Box(self.lo.to(device), self.hi.to(device))


def sample_grid(grid: torch.Tensor, box: Box, points: torch.Tensor) -> torch.Tensor:
    """Trilinear values (..., C) of a ``(1, C, Z, Y, X)`` grid at world points (..., 3); outside: border value."""
    lead = points.shape[:-1]
    coords = box.normalise(points).reshape(1, -1, 1, 1, 3)
    values = F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(grid.shape[1], -1).T.reshape(*lead, grid.shape[1])


class SdfGrid(torch.nn.Module):
    """A signed-distance grid and a colour grid (logits) over one box: the reconstruction's two fields.

    With a ``light``, the colour grid holds albedo and :meth:`rgb` shades it Lambertian-style under one directional
    light, ``albedo · (a + (1 - a) · max(0, n · l))``, with the normal ``n`` from the SDF's gradient (see
    :func:`shade`); without one, the colour grid is the (view-independent) colour itself.
    """

    def __init__(self, sdf: torch.Tensor, colour_logits: torch.Tensor, box: Box, light: torch.Tensor | None = None):
        super().__init__()
        self.sdf = torch.nn.Parameter(sdf.reshape(1, 1, *sdf.shape[-3:]).contiguous())
        self.colour = torch.nn.Parameter(colour_logits.reshape(1, 3, *colour_logits.shape[-3:]).contiguous())
        self.light = None if light is None else torch.nn.Parameter(light.detach().clone().reshape(4))
        self.box = box
        # Read once here: reading the box (a device tensor) inside an optimisation step would synchronise the host
        # with the GPU, which a CUDA-graph-captured step may not do.
        self._voxel = float(box.hi[0] - box.lo[0]) / (self.sdf.shape[-1] - 1)

    @property
    def voxel(self) -> float:
        """Edge of one SDF voxel in world units."""
        return self._voxel

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        """SDF (...,) at world points (..., 3)."""
        return sample_grid(self.sdf, self.box, points)[..., 0]

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Colour grid value (..., 3) in [0, 1] at world points (..., 3): albedo when shaded, else the colour."""
        return torch.sigmoid(sample_grid(self.colour, self.box, points))

    def gradient(self) -> torch.Tensor:
        """Central-difference SDF gradient ``(1, 3, Z, Y, X)`` of the whole grid (see :func:`sdf_gradient`).

        An optimisation step computes it once and passes it to :meth:`rgb`, :meth:`eikonal_and_smoothness` and
        :meth:`surface_area`, which otherwise each compute it again (a full-grid pass, forward and backward).
        """
        return sdf_gradient(self.sdf, self.voxel)

    def normals(self, points: torch.Tensor, gradient: torch.Tensor | None = None) -> torch.Tensor:
        """Unit SDF gradient (..., 3) at world points (..., 3), from central differences of the grid."""
        gradient = self.gradient() if gradient is None else gradient
        return F.normalize(sample_grid(gradient, self.box, points), dim=-1, eps=1e-6)

    def rgb(
        self, points: torch.Tensor, gradient: torch.Tensor | None = None, normals: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Colour (..., 3) in [0, 1] at world points (..., 3), shaded when the grid has a light.

        ``normals``: :meth:`normals` at ``points`` when the caller has them already (not looked up twice).
        """
        if self.light is None:
            return self.albedo(points)
        normals = self.normals(points, gradient) if normals is None else normals
        return self.albedo(points) * shade(normals, self.light)[..., None]

    def resample(self, resolution: int, colour_resolution: int) -> SdfGrid:
        """The same fields on finer (or coarser) grids, for coarse-to-fine optimisation."""
        with torch.no_grad():
            sdf = resize(self.sdf, self.box.shape(resolution))
            colour = resize(self.colour, self.box.shape(colour_resolution))
        return SdfGrid(sdf, colour, self.box, self.light)

    def eikonal_and_smoothness(
        self, band: float, gradient: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eikonal residual ``(|∇f| - 1)²`` and squared Laplacian ``(Δf · h)²``, averaged over voxels near the surface.

        Finite differences on the whole grid cost one pass over it and reach every voxel, which random point samples
        would not; restricting both to a band around the surface leaves the far field free (it is never rendered).
        """
        f = self.sdf[0, 0]
        h = self.voxel
        gradient = self.gradient() if gradient is None else gradient
        gx, gy, gz = gradient[0, :, 1:-1, 1:-1, 1:-1]  # interior voxels: plain central differences
        centre = f[1:-1, 1:-1, 1:-1]
        laplacian = (
            f[1:-1, 1:-1, 2:]
            + f[1:-1, 1:-1, :-2]
            + f[1:-1, 2:, 1:-1]
            + f[1:-1, :-2, 1:-1]
            + f[2:, 1:-1, 1:-1]
            + f[:-2, 1:-1, 1:-1]
            - 6 * centre
        ) / h
        near = (centre.detach().abs() < band).float()
        count = near.sum().clamp_min(1.0)
        grad_norm = torch.sqrt(gx**2 + gy**2 + gz**2 + 1e-10)
        eikonal = ((grad_norm - 1) ** 2 * near).sum() / count
        smooth = (laplacian**2 * near).sum() / count
        return eikonal, smooth

    def volume(self) -> torch.Tensor:
        """Volume (world units³) inside the surface, with a one-voxel soft step so that it is differentiable.

        As a penalty it is a uniform inward pressure on the surface: it removes what no view rules out but nothing
        shows either (the wedge of visual hull under a table top or a stool's seat, seen only at grazing angles from
        below), and the photometric and mask terms hold whatever the views do show.
        """
        return torch.sigmoid(-self.sdf / self.voxel).sum() * self.voxel**3

    def surface_area(self, gradient: torch.Tensor | None = None) -> torch.Tensor:
        """Area (world units²) of the zero level set: ``∫ δ(f) |∇f|`` with a one-voxel logistic ``δ``.

        As a penalty it is the minimal-surface prior (its gradient flow is mean-curvature flow): where the views leave
        a surface undecided between silhouette rims, the flattest one spanning them wins, e.g. a flat base rather
        than the dome that the volume pressure alone would carve into it.
        """
        h = self.voxel
        step = torch.sigmoid(self.sdf / h)
        gradient = self.gradient() if gradient is None else gradient
        return (step * (1 - step) / h * torch.sqrt((gradient**2).sum(1, keepdim=True) + 1e-10)).sum() * h**3

    def colour_tv(self) -> torch.Tensor:
        """Total variation of the colour logits (keeps unseen colour smooth and views' disagreements averaged)."""
        c = self.colour
        return (
            (c[..., 1:] - c[..., :-1]).abs().mean()
            + (c[..., 1:, :] - c[..., :-1, :]).abs().mean()
            + (c[..., 1:, :, :] - c[..., :-1, :, :]).abs().mean()
        )


def initial_light(device: torch.device) -> torch.Tensor:
    """Light parameters (4,) to start from: straight from above (the usual studio light), ambient share one half."""
    return torch.tensor([0.0, 0.0, 1.0, 0.0], device=device)


def shade(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Lambertian shading (...,) of unit normals (..., 3) under ``light`` (4,): direction (any length) and the logit
    of the ambient share ``a``, so that ``a + (1 - a) · max(0, n · l)`` is 1 where a surface faces the light.

    Tying the rendered colour to the surface normal is what makes shading a cue for geometry: with a free colour per
    point, a bulge over a flat, evenly lit top can take whatever colour the views show; shaded, its slopes turn
    brighter and darker than the views unless the albedo varies to cancel it, which the colour smoothness term
    charges for.
    """
    ambient = torch.sigmoid(light[3])
    direction = F.normalize(light[:3], dim=0)
    return ambient + (1 - ambient) * (normals @ direction).clamp_min(0)


def sdf_gradient(sdf: torch.Tensor, voxel: float) -> torch.Tensor:
    """Central-difference gradient ``(1, 3, Z, Y, X)`` (x, y, z channels) of a ``(1, 1, Z, Y, X)`` grid."""
    padded = F.pad(sdf, (1, 1, 1, 1, 1, 1), mode="replicate")
    gx = padded[..., 1:-1, 1:-1, 2:] - padded[..., 1:-1, 1:-1, :-2]
    gy = padded[..., 1:-1, 2:, 1:-1] - padded[..., 1:-1, :-2, 1:-1]
    gz = padded[..., 2:, 1:-1, 1:-1] - padded[..., :-2, 1:-1, 1:-1]
    return torch.cat([gx, gy, gz], dim=1) / (2 * voxel)


def resize(grid: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resampling of a ``(1, C, Z, Y, X)`` grid to ``shape`` with corners kept in place."""
    return F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)


def initial_colour(views: PosedViews, points: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Mean colour of the views' masked pixels onto which each point (N, 3) projects: a blurry but useful start."""
    total = torch.zeros(points.shape[0], 3, device=device)
    weight = torch.zeros(points.shape[0], 1, device=device)
    for i in range(len(views)):
        image = torch.as_tensor(views.images[i], dtype=torch.float32, device=device).permute(2, 0, 1)
        mask = torch.as_tensor(views.masks[i], dtype=torch.float32, device=device)[None]
        uv, _ = project_points(points, views.intrinsics[i], views.cam_to_world[i])
        m = sample_image(mask, uv)
        total += sample_image(image, uv) * m
        weight += m
    mean = total / weight.clamp_min(1e-3)
    fallback = torch.full_like(mean, 0.5)
    colour = torch.where(weight > 1e-3, mean, fallback).clamp(0.02, 0.98)
    return torch.logit(colour)
