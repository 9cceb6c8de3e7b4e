"""Volume rendering of a signed-distance grid: the views' pixel rays, their hull intervals, and NeuS compositing.

Each pixel ray is sampled only where the visual hull says the object can be (first to last occupied point along
the ray, padded by a voxel), so a fixed, small number of stratified samples covers the object densely without an
occupancy-grid sampler or custom CUDA. Rays that never meet the hull are left out of training: they are empty in
every consistent answer. Opacity between consecutive samples follows NeuS's discrete formula on the logistic CDF
of the SDF, ``alpha = max(Φ(f_i) - Φ(f_{i+1}), 0) / Φ(f_i)``, which stays correct for coarse sample spacings because
it integrates the density exactly for a locally planar surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.posed_views import PosedViews
from recon.sdf_grid import Box, SdfGrid, sample_grid


@dataclass
class RayBatch:
    """Rays with their hull intervals and their targets."""

    origins: torch.Tensor
    """(R, 3) world."""
    directions: torch.Tensor
    """(R, 3) unit."""
    near: torch.Tensor
    """(R,) ray parameter where sampling starts."""
    far: torch.Tensor
    """(R,) ray parameter where sampling ends."""
    rgb: torch.Tensor
    """(R, 3) target colour in [0, 1] (straight, not premultiplied)."""
    mask: torch.Tensor
    """(R,) target opacity in [0, 1]."""
    view: torch.Tensor
    """(R,) index of the view each ray comes from."""
    normal: torch.Tensor | None = None
    """(R, 3) target surface normal in world space when the views carry normal maps: the area-average of the unit
    normals the pixel covers, so its length (at most 1) is the share of the pixel that has one, 0 on the background."""
    pixel: torch.Tensor | None = None
    """(R, 2) the ray's pixel centre (x right, y down) in pixels of its view at the fitted size."""

    def __getitem__(self, index: torch.Tensor) -> RayBatch:
        return RayBatch(*(_select(getattr(self, name), index) for name in self.__dataclass_fields__))

    def __len__(self) -> int:
        return self.origins.shape[0]

    def to(self, device: torch.device) -> RayBatch:
        return RayBatch(*(_to(getattr(self, name), device) for name in self.__dataclass_fields__))


def _select(values: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else values[index]


def _to(values: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if values is None else values.to(device)


def resized_views(views: PosedViews, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N, 3, s, s), masks (N, s, s) and intrinsics (N, 3, 3) at side ``size`` (area-averaged)."""
    h, w = views.size
    images = torch.as_tensor(views.images, dtype=torch.float32).permute(0, 3, 1, 2)
    masks = torch.as_tensor(views.masks, dtype=torch.float32)[:, None]
    k = torch.as_tensor(views.intrinsics, dtype=torch.float32).clone()
    if (h, w) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="area")
        masks = F.interpolate(masks, size=(size, size), mode="area")
        k[:, 0] *= size / w
        k[:, 1] *= size / h
    return images.clamp(0, 1), masks[:, 0].clamp(0, 1), k


def pixel_rays(
    views: PosedViews,
    size: int,
    device: torch.device,
    normals: bool = False,
    pixels: bool = False,
) -> RayBatch:
    """One ray through the centre of every pixel of every view at side ``size``, with near = far = 0 for now, in
    view-major, row-major order.

    ``normals`` (views with :attr:`PosedViews.normals` only) also gives each ray its target normal in world space;
    ``pixels`` its :attr:`RayBatch.pixel`.
    """
    images, masks, k = resized_views(views, size)
    c2w = torch.as_tensor(views.cam_to_world, dtype=torch.float32)
    j, i = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    origins, directions, view = [], [], []
    for n in range(len(views)):
        x = (i - k[n, 0, 2]) / k[n, 0, 0]
        y = -(j - k[n, 1, 2]) / k[n, 1, 1]
        cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1).reshape(-1, 3)
        d = F.normalize(cam @ c2w[n, :3, :3].T, dim=-1)
        directions.append(d)
        origins.append(c2w[n, :3, 3].expand_as(d))
        view.append(torch.full((d.shape[0],), n))
    zeros = torch.zeros(len(views) * size * size)
    rays = RayBatch(
        torch.cat(origins),
        torch.cat(directions),
        zeros,
        zeros.clone(),
        images.permute(0, 2, 3, 1).reshape(-1, 3),
        masks.reshape(-1),
        torch.cat(view),
        world_normals(views, size, c2w).reshape(-1, 3) if normals else None,
        torch.stack([i, j], dim=-1).reshape(-1, 2).repeat(len(views), 1) if pixels else None,
    )
    return rays.to(device)


def world_normals(views: PosedViews, size: int, cam_to_world: torch.Tensor) -> torch.Tensor:
    """The views' camera-space normal maps area-averaged to side ``size`` and turned into world space, (N, s, s, 3).

    Averaging keeps the zero background zero, so the length of a result is the pixel's share of normal (see
    :attr:`RayBatch.normal`); the direction is the mean normal, as the pixel's ray should see it.
    """
    if views.normals is None:
        raise ValueError("these views carry no normal maps")
    normals = torch.as_tensor(views.normals, dtype=torch.float32).permute(0, 3, 1, 2)
    if normals.shape[-2:] != (size, size):
        normals = F.interpolate(normals, size=(size, size), mode="area")
    # camera frame → world: the columns of the camera-to-world rotation are the camera's axes in the world
    return torch.einsum("nij,njhw->nhwi", cam_to_world[:, :3, :3], normals)


def clip_to_hull(rays: RayBatch, occupancy: torch.Tensor, box: Box, steps: int, pad: float) -> RayBatch:
    """The rays that meet the occupied volume, with near/far set to its first and last hit along them (± ``pad``).

    ``occupancy`` is a ``(1, 1, Z, Y, X)`` float volume over ``box``. The march is coarse (``steps`` points across
    the box's diagonal), so the occupancy should already be dilated by about one step.
    """
    diag = float(torch.linalg.norm(box.hi - box.lo))
    centre = (box.hi + box.lo) / 2
    keep_near, keep_far, hit = [], [], []
    for start in range(0, len(rays), 65536):
        o, d = rays.origins[start : start + 65536], rays.directions[start : start + 65536]
        t_centre = ((centre - o) * d).sum(-1, keepdim=True)
        t = t_centre + torch.linspace(-diag / 2, diag / 2, steps, device=o.device)
        points = o[:, None] + t[..., None] * d[:, None]
        occ = sample_grid(occupancy, box, points)[..., 0] > 0.5
        inside = ((points >= box.lo) & (points <= box.hi)).all(-1)
        occ &= inside
        any_hit = occ.any(-1)
        first = torch.argmax(occ.int(), dim=-1)
        last = steps - 1 - torch.argmax(occ.flip(-1).int(), dim=-1)
        keep_near.append(t.gather(1, first[:, None])[:, 0] - pad)
        keep_far.append(t.gather(1, last[:, None])[:, 0] + pad)
        hit.append(any_hit)
    rays.near, rays.far = torch.cat(keep_near), torch.cat(keep_far)
    return rays[torch.cat(hit)]


@dataclass
class Rendered:
    """What a batch of rays sees."""

    rgb: torch.Tensor
    """(R, 3) composited over the background."""
    opacity: torch.Tensor
    """(R,) accumulated opacity."""
    depth: torch.Tensor
    """(R,) expected ray parameter of the surface (weights-normalised)."""
    normal: torch.Tensor | None = None
    """(R, 3) when asked for: expected surface normal in world space, the unit SDF gradients of the samples summed
    with the compositing weights (not renormalised: its length is at most the opacity)."""


def render_rays(
    field: SdfGrid,
    rays: RayBatch,
    samples: int,
    inv_s: float | torch.Tensor,
    background: torch.Tensor,
    jitter: torch.Tensor | None = None,
    colour_per_sample: bool = True,
    gradient: torch.Tensor | None = None,
    normals: bool = False,
) -> Rendered:
    """NeuS-composite ``samples`` stratified segments per ray between near and far over ``background`` (R, 3).

    ``jitter`` (R, 1) in [0, 1) shifts each ray's samples within their segments (stratified sampling); None samples
    segment centres. ``inv_s`` may be a float or a 0-d tensor (a schedule read on the device). ``gradient``: the
    field's SDF gradient when the caller has it already (:meth:`SdfGrid.gradient`), for shading and ``normals``
    (which also renders :attr:`Rendered.normal`).
    """
    r = len(rays)
    device = rays.origins.device
    jitter = 0.5 if jitter is None else jitter
    step = (rays.far - rays.near)[:, None] / samples
    t = rays.near[:, None] + (torch.arange(samples + 1, device=device) + jitter - 0.5) * step
    points = rays.origins[:, None] + t[..., None] * rays.directions[:, None]
    sdf = field.signed_distance(points)
    cdf = torch.sigmoid(sdf * inv_s)
    alpha = ((cdf[:, :-1] - cdf[:, 1:]) / (cdf[:, :-1] + 1e-5)).clamp(0.0, 1.0)
    # exp(cumsum(log)) rather than cumprod: cumprod's backward checks its input for zeros on the host, a GPU sync
    # that CUDA graph capture of the fitting step forbids.
    survive = torch.log(1 - alpha + 1e-7)
    transmittance = torch.exp(torch.cumsum(torch.cat([torch.zeros(r, 1, device=device), survive], dim=-1), dim=-1))
    weights = alpha * transmittance[:, :-1]
    opacity = weights.sum(-1)
    t_mid = (t[:, 1:] + t[:, :-1]) / 2
    depth = (weights * t_mid).sum(-1) / opacity.clamp_min(1e-6)
    mid = (points[:, 1:] + points[:, :-1]) / 2
    sample_normals = field.normals(mid, gradient) if normals else None
    normal = None if sample_normals is None else (weights[..., None] * sample_normals).sum(1)
    if colour_per_sample:  # full volume rendering: photo-consistency along the ray moves the surface
        colour = field.rgb(mid, gradient, sample_normals)
        rgb = (weights[..., None] * colour).sum(1) + (1 - opacity[:, None]) * background
    else:  # one colour lookup per ray at the expected surface point: several times cheaper, weaker on geometry
        surface = rays.origins + depth[:, None] * rays.directions
        rgb = field.rgb(surface, gradient) * opacity[:, None] + (1 - opacity[:, None]) * background
    return Rendered(rgb, opacity, depth, normal)
