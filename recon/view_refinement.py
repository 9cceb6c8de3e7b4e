"""Per-view corrections learnt with the fields: a camera pose correction, an image registration, a colour transform.

Each generated view is its own sample: slightly misregistered against the fixed Zero123++ cameras, with its own
exposure and white balance. Fitting one field to all six as they are averages the disagreement into blur, thin parts
and ghosts. So the fit may move each camera a little (a rotation about its centre and a translation, held near the
given pose by a squared penalty and locked during a warm-up, as nerfstudio's camera optimiser and BARF do) and
recolour what it renders for each view (an affine colour transform, as NeRF in the Wild's appearance codes do, held
near identity by a Charbonnier penalty, so that the views that agree set the field's colour and an outlier view
takes its own transform). A registration (:class:`ViewWarp`) does on the image side what the pose correction does on
the rays: each view's targets are read through a smooth displacement field of its own, so a view whose content sits
a few pixels off (shifted, rotated, scaled, locally distorted) is registered onto what the other views agree on,
without the cost of sending gradients through the samples' positions; a finer field that bends joins it only when the
views turn out to disagree. The fields may not move all views together (:func:`gauge_basis`): that would only move
the object away from where the given cameras put it. All are undone for baking: the texture is projected through the
corrected cameras from the views registered and with their colour transforms inverted (:func:`corrected_views`).

Pose corrections are in pixels of the fitted image, so their learning rate and penalty read the same at any
resolution: a rotation of ``p`` about an axis across the view moves the image by ``p`` pixels, a translation of
``p`` across it too. Both classes are free of host synchronisation (the fitting step is a CUDA graph).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from recon.cameras import project_points
from recon.posed_views import PosedViews
from recon.volume_render import RayBatch, Rendered


class PoseRefinement(torch.nn.Module):
    """A learnt rotation (about the camera centre) and translation per view, both in world axes."""

    def __init__(self, cam_to_world: torch.Tensor, focal: float):
        super().__init__()
        count = cam_to_world.shape[0]
        self.offset = torch.nn.Parameter(torch.zeros(count, 6, device=cam_to_world.device))
        """(N, 6): rotation vector and translation per view, in pixels of the fitted image."""
        self.focal = focal
        self.register_buffer("distance", torch.linalg.norm(cam_to_world[:, :3, 3], dim=-1))

    def rotations(self) -> torch.Tensor:
        """(N, 3, 3) world-frame rotations about each camera's centre."""
        return axis_angle_to_matrix(self.offset[:, :3] / self.focal)

    def translations(self) -> torch.Tensor:
        """(N, 3) world translations of the camera centres."""
        return self.offset[:, 3:] * (self.distance / self.focal)[:, None]

    def apply(self, rays: RayBatch, learn: bool = True) -> RayBatch:
        """The rays as the corrected cameras cast them (held fixed, with no gradient, unless ``learn``)."""
        rotation, translation = self.rotations(), self.translations()
        if not learn:
            rotation, translation = rotation.detach(), translation.detach()
        directions = (rotation[rays.view] @ rays.directions[..., None])[..., 0]
        origins = rays.origins + translation[rays.view]
        return dataclasses.replace(rays, origins=origins, directions=directions)

    def penalty(self) -> torch.Tensor:
        """Mean squared correction per view, pixels²."""
        return (self.offset**2).sum(-1).mean()

    def cam_to_world(self, cam_to_world: np.ndarray) -> np.ndarray:
        """The corrected camera-to-world matrices (N, 4, 4) of the given ones."""
        with torch.no_grad():
            rotation = self.rotations().cpu().double().numpy()
            translation = self.translations().cpu().double().numpy()
        corrected = np.array(cam_to_world, dtype=np.float64)
        corrected[:, :3, :3] = rotation @ corrected[:, :3, :3]
        corrected[:, :3, 3] += translation
        return corrected


#: Colour the affine transforms are centred on: gain and offset then barely trade off (faster, better conditioned).
PIVOT = 0.5


class ColourCompensation(torch.nn.Module):
    """An affine colour transform per view, ``rgb ↦ A (rgb - p) + p + b`` about the mid-gray ``p``
    (:data:`PIVOT`), applied to what the fit renders for the view."""

    def __init__(self, count: int, device: torch.device):
        super().__init__()
        self.affine = torch.nn.Parameter(torch.zeros(count, 3, 4, device=device))
        """(N, 3, 4): ``A - I`` and ``b`` per view."""

    def transforms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Matrices ``A`` (N, 3, 3) and offsets ``b`` (N, 3)."""
        eye = torch.eye(3, device=self.affine.device)
        return eye + self.affine[:, :, :3], self.affine[:, :, 3]

    def apply(self, out: Rendered, view: torch.Tensor, background: torch.Tensor) -> Rendered:
        """``out`` with the object's colour (not the background's) transformed by each ray's view, kept in range."""
        matrix, offset = self.transforms()
        opacity = out.opacity[:, None]
        premultiplied = out.rgb - (1 - opacity) * background
        pivot = PIVOT * opacity
        coloured = (matrix[view] @ (premultiplied - pivot)[..., None])[..., 0] + pivot + offset[view] * opacity
        coloured = torch.minimum(coloured.clamp_min(0), opacity)  # the views' pixels saturate at 0 and 1
        return dataclasses.replace(out, rgb=coloured + (1 - opacity) * background)

    def penalty(self) -> torch.Tensor:
        """Mean Charbonnier size of the transforms' departure from identity (robust: an outlier view may go far)."""
        return torch.sqrt(self.affine**2 + 1e-6).sum((1, 2)).mean()


class ViewWarp(torch.nn.Module):
    """A displacement field per view on a coarse grid of nodes, in pixels of the fitted image: each ray reads its
    view's targets (colour, mask, normal) at its pixel plus the field there, bilinearly.

    The grid is coarse (a few nodes across the view), so the field can follow a shift, rotation, scale or a smooth
    local distortion but not redraw detail; a penalty (``recon.registration_penalty``) holds it near zero. Bilinear
    interpolation reproduces any affine field, so a misregistration by a similarity is represented exactly.

    Optionally a second, finer field per view (:attr:`bend`) adds a bend, but only once :meth:`decide` has found the
    coarse fields moved (the views disagree): on views that agree a field that bends would only bend them towards a
    shape still wrong, while generated views also disagree locally, which the coarse field cannot follow.
    """

    def __init__(
        self,
        targets: torch.Tensor,
        cells: int,
        blur: float,
        gauge: torch.Tensor,
        penalty: str,
        bend_gauge: torch.Tensor | None = None,
        bend_above: float = 0.0,
    ):
        super().__init__()
        self.channels = targets.shape[-1]
        smooth = blurred(targets, blur) if blur > 0 else targets
        self.register_buffer("targets", torch.cat([targets, smooth], dim=-1))
        """(N, s, s, 2C) the views' targets at the fitted size (RGB, mask, then the normal if present),
        then the same blurred, whose slopes steer the fields (:meth:`apply`)."""
        count = targets.shape[0]
        self.offset = torch.nn.Parameter(torch.zeros(count, cells, cells, 2, device=targets.device))
        """(N, cells, cells, 2) displacement (x right, y down) at each node in pixels; node (0, 0) is the top left."""
        self.penalty_kind = penalty
        """"squared" or "length" (:meth:`penalty`)."""
        self.register_buffer("gauge", gauge)
        """(G, N·cells·cells·2) orthonormal rows: the joint fields that a move of the whole object would explain
        (:func:`gauge_basis`), projected out of :attr:`offset`."""
        self.bend: torch.nn.Parameter | None = None
        """(N, b, b, 2) the finer fields added to the coarse ones once the bend is open, or None (no bend)."""
        if bend_gauge is not None:
            bend_cells = round((bend_gauge.shape[1] // (2 * count)) ** 0.5)
            self.bend = torch.nn.Parameter(torch.zeros(count, bend_cells, bend_cells, 2, device=targets.device))
        self.register_buffer("bend_gauge", bend_gauge)
        """(G, N·b·b·2) :attr:`gauge` for the finer node grid."""
        self.register_buffer("bend_open", torch.zeros((), device=targets.device))
        """1 once :meth:`decide` found the views disagreeing, else 0: the bend's weight (at 0 it gets no gradient)."""
        self.bend_above = bend_above
        """Root-mean-square coarse displacement (pixels) above which :meth:`decide` opens the bend."""

    @classmethod
    def for_rays(
        cls,
        rays: RayBatch,
        views: PosedViews,
        cells: int,
        blur: float,
        penalty: str,
        bend_cells: int = 0,
        bend_above: float = 0.0,
    ) -> ViewWarp:
        """The fields of ``views`` over the targets of ``rays``, one per pixel of each (:func:`pixel_rays`), with a
        bend of ``bend_cells`` nodes a side when that is more than ``cells``.

        The gauge is taken at the views' own size: scaling every pixel coordinate alike spans the same fields."""
        count = len(views)
        values = target_values(rays)
        size = round((len(rays) // count) ** 0.5)
        gauge = gauge_basis(views.intrinsics, views.cam_to_world, views.size[1], cells).to(values.device)
        bend_gauge = None
        if bend_cells > cells:
            bend_gauge = gauge_basis(views.intrinsics, views.cam_to_world, views.size[1], bend_cells).to(values.device)
        targets = values.reshape(count, size, size, values.shape[-1])
        return cls(targets, cells, blur, gauge, penalty, bend_gauge, bend_above)

    def free_offset(self) -> torch.Tensor:
        """:attr:`offset` less its part along :attr:`gauge`.

        Six views registered onto a field they also shape have a common freedom: the field may move, turn or scale
        the object a little and every view's field follow it, at no cost in the loss. Left free, the object drifts
        away from where the given cameras put it (on clean views that lost ~3 dB of texture PSNR), so the fields may
        only disagree with one another, never move together.
        """
        return without_gauge(self.offset, self.gauge)

    def free_bend(self) -> torch.Tensor:
        """:attr:`bend` less its part along :attr:`bend_gauge`, weighted by :attr:`bend_open`."""
        return self.bend_open * without_gauge(self.bend, self.bend_gauge)

    def displacement(self, view: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        """(R, 2) the field of each ray's view at its pixel (R, 2), pixels."""
        side = self.targets.shape[1]
        moved = field_at(self.free_offset(), view, pixel * ((self.offset.shape[1] - 1) / side))
        if self.bend is not None:
            moved = moved + field_at(self.free_bend(), view, pixel * ((self.bend.shape[1] - 1) / side))
        return moved

    def apply(self, rays: RayBatch) -> RayBatch:
        """The rays with their targets read through their views' fields.

        The values are the sharp targets', the gradient towards the fields the blurred targets': a sharp edge has a
        slope only within a pixel of it, so a view off by more would get no pull back from it.
        """
        read = bilinear(self.targets, rays.view, rays.pixel + self.displacement(rays.view, rays.pixel) - 0.5)
        sharp, smooth = read.split(self.channels, -1)
        return with_target_values(rays, sharp.detach() + smooth - smooth.detach())

    def decide(self, now: torch.Tensor) -> None:
        """Open the bend if ``now`` (1 at the deciding step, else 0) and the coarse fields have moved by more than
        :attr:`bend_above` (root mean square over every node); once open it stays open. On the device, no sync."""
        with torch.no_grad():
            moved = ((self.free_offset() ** 2).sum(-1).mean().sqrt() > self.bend_above).to(now.dtype)
            self.bend_open.copy_(torch.maximum(self.bend_open, now * moved))

    def penalty(self) -> torch.Tensor:
        """Mean squared displacement per node (pixels²), or its mean length (pixels, smoothed within 0.01 px of
        zero so that its gradient is defined there); the bend's nodes add theirs once it is open."""
        total = self._node_penalty(self.free_offset())
        if self.bend is not None:
            total = total + self.bend_open * self._node_penalty(self.free_bend())
        return total

    def _node_penalty(self, nodes: torch.Tensor) -> torch.Tensor:
        squared = (nodes**2).sum(-1)
        return torch.sqrt(squared + 1e-4).mean() if self.penalty_kind == "length" else squared.mean()

    def rms(self) -> float:
        """Root-mean-square displacement of :meth:`fields` at their nodes, pixels (reads the device)."""
        return float(np.sqrt(((self.fields() * self.targets.shape[1]) ** 2).sum(-1).mean()))

    def fields(self) -> np.ndarray:
        """(N, c, c, 2) the learnt fields in units of the view's side (so they apply at any resolution): the coarse
        ones, or with an open bend the sum on the bend's finer nodes (exact: a bilinear field is bilinear per cell)."""
        field = self.free_offset().detach()
        if self.bend is not None and bool(self.bend_open):
            count, cells = self.bend.shape[:2]
            ticks = torch.arange(cells, device=field.device, dtype=field.dtype) * ((field.shape[1] - 1) / (cells - 1))
            y, x = torch.meshgrid(ticks, ticks, indexing="ij")
            node = torch.stack([x, y], -1).reshape(-1, 2).repeat(count, 1)
            view = torch.arange(count, device=field.device).repeat_interleave(cells * cells)
            field = field_at(field, view, node).reshape(self.bend.shape) + self.free_bend().detach()
        return (field / self.targets.shape[1]).cpu().numpy()


def without_gauge(offset: torch.Tensor, gauge: torch.Tensor) -> torch.Tensor:
    """Node displacements ``offset`` less their part along the orthonormal rows of ``gauge`` (:func:`gauge_basis`)."""
    flat = offset.reshape(-1)
    return (flat - (gauge @ flat) @ gauge).reshape(offset.shape)


def gauge_basis(intrinsics: np.ndarray, cam_to_world: np.ndarray, size: int, cells: int) -> torch.Tensor:
    """(G, N·cells·cells·2) orthonormal basis of the joint displacement fields (:attr:`ViewWarp.offset` laid flat)
    that a small similarity of the whole object (translation, rotation, scale about the origin) gives the views: the
    image motions (:func:`similarity_motions`) at each view's nodes."""
    ticks = np.arange(cells) * size / (cells - 1)
    y, x = np.meshgrid(ticks, ticks, indexing="ij")
    nodes = np.stack([x, y], -1).reshape(-1, 2)
    fields = [similarity_motions(k, c2w, nodes) for k, c2w in zip(intrinsics, cam_to_world, strict=True)]
    basis = torch.as_tensor(np.stack(fields, 1).reshape(7, -1))
    _, singular, rows = torch.linalg.svd(basis, full_matrices=False)
    return rows[singular > 1e-6 * singular[0]].float()


def similarity_motions(k: np.ndarray, cam_to_world: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(7, P, 2) image motion at ``pixels`` (P, 2) of one view, per unit of each generator of a similarity of the
    object: translations along x, y, z, rotations about them (through the origin), scale about the origin.

    Each pixel is lifted to the origin's depth along its ray and moved; its projection's displacement (central
    differences, float64) is the generator's motion there: first order, and for a turn right only at that depth.
    """
    k = torch.as_tensor(k, dtype=torch.float64)
    c2w = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float64)
    pixels = torch.as_tensor(pixels, dtype=torch.float64)
    depth = torch.linalg.norm(c2w[:3, 3])
    x = (pixels[:, 0] - k[0, 2]) / k[0, 0] * depth
    y = -(pixels[:, 1] - k[1, 2]) / k[1, 1] * depth
    points = torch.stack([x, y, -depth.expand_as(x)], -1) @ c2w[:3, :3].T + c2w[:3, 3]
    eye = torch.eye(3, dtype=torch.float64)[:, None].expand(3, len(points), 3)
    turns = torch.cross(eye, points[None].expand(3, -1, -1), dim=-1)
    motions = torch.cat([eye, turns, points[None]])  # (7, P, 3)
    step = 1e-4
    ahead = project_points(points + step * motions, k, c2w)[0]
    behind = project_points(points - step * motions, k, c2w)[0]
    return ((ahead - behind) / (2 * step)).numpy()


def target_values(rays: RayBatch) -> torch.Tensor:
    """(R, C) each ray's targets side by side: RGB, mask, then the normal where the rays carry one."""
    values = [rays.rgb, rays.mask[:, None]]
    if rays.normal is not None:
        values.append(rays.normal)
    return torch.cat(values, dim=-1)


def with_target_values(rays: RayBatch, values: torch.Tensor) -> RayBatch:
    """``rays`` with their targets replaced by ``values`` (R, C), laid out as :func:`target_values` lays them out."""
    normal = values[:, 4:] if rays.normal is not None else None
    return dataclasses.replace(rays, rgb=values[:, :3], mask=values[:, 3], normal=normal)


def field_at(offset: torch.Tensor, view: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    """(R, 2) the displacement fields ``offset`` (N, c, c, 2) of views ``view`` (R,) at ``node`` (R, 2) = (x, y) in
    units of the node spacing, bilinearly.

    Dense tent weights and a one-hot product rather than a gather: the gather's backward would add every ray's
    gradient into a few dozen parameters with atomics, one at a time.
    """
    cells = offset.shape[1]
    ticks = torch.arange(cells, device=node.device, dtype=node.dtype)
    wx = (1 - (node[:, :1] - ticks).abs()).clamp_min(0)
    wy = (1 - (node[:, 1:] - ticks).abs()).clamp_min(0)
    weights = (wy[:, :, None] * wx[:, None, :]).reshape(-1, 1, cells * cells)
    rows = F.one_hot(view, offset.shape[0]).to(offset.dtype) @ offset.reshape(len(offset), -1)
    return (weights @ rows.reshape(-1, cells * cells, 2))[:, 0]


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images (N, H, W, C) convolved with a Gaussian of ``sigma`` pixels (separable, borders replicated)."""
    radius = int(3 * sigma + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=images.device) / sigma) ** 2)
    taps = (taps / taps.sum()).to(images.dtype)
    planes = images.permute(0, 3, 1, 2).reshape(-1, 1, *images.shape[1:3])
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))
    return planes.reshape(images.shape[0], images.shape[3], *images.shape[1:3]).permute(0, 2, 3, 1)


def bilinear(table: torch.Tensor, index: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """(R, C) rows of ``table`` (N, H, W, C), each from entry ``index`` (R,) at ``point`` (R, 2) = (x, y) in units of
    the table's cells (cell centres at integers), clamped to its border; differentiable in ``point`` and ``table``.
    Gathers rather than ``grid_sample`` because each row reads its own entry."""
    _, height, width, channels = table.shape
    x = point[:, 0].clamp(0, width - 1)
    y = point[:, 1].clamp(0, height - 1)
    x0 = x.detach().floor().clamp(max=width - 2).long()
    y0 = y.detach().floor().clamp(max=height - 2).long()
    wx, wy = (x - x0)[:, None], (y - y0)[:, None]
    flat = table.reshape(-1, channels)
    base = (index * height + y0) * width + x0
    top = flat[base] * (1 - wx) + flat[base + 1] * wx
    bottom = flat[base + width] * (1 - wx) + flat[base + width + 1] * wx
    return top * (1 - wy) + bottom * wy


def warp_images(images: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) read through the learnt fields (N, c, c, 2) (units of the side, :meth:`ViewWarp.fields`):
    the views as registered onto the fit, for baking."""
    count, height, width, channels = images.shape
    table = torch.as_tensor(np.asarray(images, dtype=np.float32))
    field = torch.as_tensor(fields, dtype=torch.float32) * torch.tensor([width, height], dtype=torch.float32)
    y, x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pixel = torch.stack([x, y], -1).reshape(-1, 2).repeat(count, 1)
    view = torch.arange(count).repeat_interleave(height * width)
    cells = torch.tensor([(fields.shape[2] - 1) / width, (fields.shape[1] - 1) / height])
    moved = pixel + field_at(field, view, pixel * cells) - 0.5
    return bilinear(table, view, moved).reshape(count, height, width, channels).numpy()


def axis_angle_to_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (Rodrigues; smooth through zero)."""
    angle2 = (vectors**2).sum(-1, keepdim=True)[..., None]
    angle = torch.sqrt(angle2 + 1e-12)
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vectors.shape[:-1], 3, 3)
    eye = torch.eye(3, device=vectors.device, dtype=vectors.dtype)
    return eye + torch.sin(angle) / angle * skew + (1 - torch.cos(angle)) / (angle2 + 1e-12) * (skew @ skew)


def undo_colour(images: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Images (N, H, W, 3) in [0, 1] with each view's transform (:attr:`ColourCompensation.affine`, (N, 3, 4))
    inverted: the colours of the field."""
    inverse = np.linalg.inv(np.eye(3) + affine[:, :, :3].astype(np.float64)).astype(np.float32)
    offset = affine[:, :, 3].astype(np.float32)
    shifted = np.asarray(images, dtype=np.float32) - PIVOT - offset[:, None, None]
    # A batched float32 matmul: an einsum in float64 over six full views cost several times more, on the way to a GLB
    restored = shifted @ inverse.transpose(0, 2, 1)[:, None] + PIVOT
    return restored.clip(0, 1)


def corrected_views(
    views: PosedViews, cam_to_world: np.ndarray | None, colour: np.ndarray | None, warps: np.ndarray | None = None
) -> PosedViews:
    """``views`` seen through corrected cameras, registered through their fields (N, c, c, 2) and with their colour
    transforms (N, 3, 4) undone (for baking)."""
    if warps is not None:
        warped = warp_images(np.concatenate([views.images, views.masks[..., None]], axis=-1), warps).clip(0, 1)
        views = dataclasses.replace(views, images=warped[..., :3], masks=warped[..., 3])
    if cam_to_world is not None:
        views = dataclasses.replace(views, cam_to_world=cam_to_world)
    if colour is not None:
        views = dataclasses.replace(views, images=undo_colour(views.images, colour))
    return views
