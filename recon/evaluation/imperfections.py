"""Imperfect views: what a multi-view diffusion model gets wrong, added per view to oracle views, seeded.

Oracle views (:mod:`recon.evaluation.oracle`) are exact renders at exactly the fixed poses. Real Zero123++ output is
six samples drawn together, each slightly wrong in its own way. :func:`imperfect_views` imitates that in six
families, each of which can be switched on alone (``ImperfectionConfig.families``); one ``strength`` scales all of
them (0 is the identity, exactly; 1 is a mild, plausible level; 2 a bad sample). Sizes at strength 1 are those the
issue that asked for this benchmark measured with; they are stated, not tuned to what any fit corrects.

Families, and why each resembles real output (sources as repository + issue number, or address):

- ``misregistration``: a similarity warp per view (shift ~1.5 px, rotation ~1 deg, scale ~1.5 % at strength 1,
  about the view's centre). The cameras are never estimated; they are implied by the model version, and the model
  only approximately honours them: the Zero123++ report names "geometric misalignment" among the failure modes it
  reduces, not removes (https://ar5iv.labs.arxiv.org/html/2310.15110); its object size convention was itself
  ambiguous (unit cube vs unit sphere), so generated objects come out at slightly different scales
  (TencentARC/InstantMesh#5, SUDO-AI-3D/zero123plus#73), and users find InstantMesh's meshes off in scale against
  the six Zero123++ poses (TencentARC/InstantMesh#134).
- ``inconsistency``: a smooth random displacement field (~2 px RMS, correlated over ~1/6 of the view), different in
  each view, so details and thin parts sit in slightly different places. Fancy123 (https://arxiv.org/html/2411.16185)
  reports exactly this for Zero123++ output ("local inconsistencies", "misaligned pixels" that ghost when unprojected)
  and corrects it with per-view 2D deformation fields; Unique3D's authors describe the same effect on their views
  (AiuniAI/Unique3D#44: no consistent solution exists, so surfaces go wavy).
- ``photometric``: exposure (+-6 %), white balance (+-3 % per channel), gamma (+-5 %) and a low-frequency shading
  field (+-6 %) applied to the object, not to the background. Each view is its own sample of appearance; the
  reconstruction stage sees the same surface with different brightness from different views (the field's remedy,
  per-view appearance codes as in NeRF in the Wild, exists for this reason).
- ``detail``: down to 256 px and back up to 320, then a 0.6 px blur. Views are 320 px and decoded by the SD VAE;
  users find them too soft for textures (SUDO-AI-3D/zero123plus#94, TencentARC/InstantMesh#146, #52).
- ``noise``: Gaussian, 2/255 per channel, everywhere (the VAE decoder never paints a perfectly flat background; the
  product's own background mask has a noisy-background mode for that reason, :mod:`recon.masks`).
- ``silhouette``: edges feathered (~0.7 px), haloed (a ~1 px ring lighter or darker than the gray by ~6 %) and
  slightly eroded or dilated (~0.5 px). The views carry no alpha, only a gray background; background removal on them
  is known to be inconsistent, worst where the object is near that gray (SUDO-AI-3D/zero123plus#64), and soft or
  grey fringes are the usual complaint about such cut-outs (ZHO-ZHO-ZHO/ComfyUI-BRIA_AI-RMBG#7, danielgatis/rembg#843).

Each per-view parameter is drawn from a normal distribution whose standard deviation is the stated size times the
strength, truncated at two standard deviations (mild means mild: no 4-sigma view), from a generator seeded by
``(seed, view, family)``: the same seed gives the same views, switching one
family on or off leaves the others' draws unchanged, and doubling the strength doubles every drawn parameter.

What the product sees: ``img2mesh recon GRID`` gets a 640x960 RGB grid with no alpha and derives each view's mask
from the gray background (:func:`recon.masks.compute_masks`). :func:`as_grid` and :func:`as_user_views` take the
imperfect views exactly that way, so mask artefacts come from the same code a user runs; the corrupted alpha that
:func:`imperfect_views` also returns is the matte the imperfections imply (useful to isolate mask derivation, and
like the mattes the normal ControlNet gives), not what a user's grid carries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from recon.config import ViewsConfig
from recon.mesh_grids import GRAY
from recon.posed_views import PosedViews, join_grid, to_uint8
from recon.view_refinement import similarity_motions

Family = Literal["misregistration", "inconsistency", "photometric", "detail", "noise", "silhouette"]
#: Every family, in the order they are applied.
FAMILIES: tuple[Family, ...] = get_args(Family)


@dataclass(frozen=True)
class ImperfectionConfig:
    """How strongly, and in which ways, the views are made imperfect (sizes are standard deviations at strength 1)."""

    strength: float = 1.0
    """Scales every family: 0 leaves the views untouched, 1 is mild, 2 is a bad sample."""
    families: tuple[Family, ...] = FAMILIES
    """Which families are on (any subset of ``FAMILIES``)."""
    shift_px: float = 1.5
    """Misregistration: shift of the view along each image axis, in pixels."""
    rotation_deg: float = 1.0
    """Misregistration: rotation of the view about its centre, in degrees."""
    scale: float = 0.015
    """Misregistration: relative change of the view's scale about its centre."""
    warp_px: float = 2.0
    """Inconsistency: RMS length of the smooth displacement field, in pixels."""
    warp_cells: int = 6
    """Inconsistency: the field is drawn on a lattice of this many cells per side (correlation ~ view / cells)."""
    exposure: float = 0.06
    """Photometric: relative gain of the object's colours."""
    white_balance: float = 0.03
    """Photometric: relative gain of each colour channel (normalised to keep the mean gain)."""
    gamma: float = 0.05
    """Photometric: log of the gamma applied to the object's colours."""
    shading: float = 0.06
    """Photometric: amplitude (RMS) of a smooth multiplicative shading field over the object."""
    shading_cells: int = 3
    """Photometric: lattice cells per side of the shading field."""
    detail_share: float = 0.8
    """Lost detail: side of the low-resolution copy as a share of the view's side (256 of 320 px)."""
    blur_px: float = 0.6
    """Lost detail: Gaussian blur after resampling, sigma in pixels."""
    noise: float = 2 / 255
    """Noise: Gaussian noise per channel and pixel, in [0, 1] colour units."""
    feather_px: float = 0.7
    """Silhouette: Gaussian blur of the object's alpha, sigma in pixels (per view between 0.5x and 1.5x)."""
    halo: float = 0.06
    """Silhouette: brightness of the halo ring just outside the object, relative to the gray background."""
    halo_px: float = 1.0
    """Silhouette: width (sigma) of the halo ring, in pixels."""
    edge_px: float = 0.5
    """Silhouette: dilation (positive) or erosion (negative) of the object's outline, in pixels."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown imperfection families {unknown}; choose from {', '.join(FAMILIES)}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if not 0 < self.detail_share <= 1:
            raise ValueError(f"detail_share must be in (0, 1], got {self.detail_share}")


def imperfect_views(views: PosedViews, config: ImperfectionConfig | None = None, seed: int = 0) -> PosedViews:
    """``views`` (oracle views: RGB composited on gray 127, exact alpha) made imperfect view by view.

    Returns views whose images are the imperfect RGB on gray at 8-bit levels (as a grid file holds them) and whose
    masks are the imperfect alpha (module docstring; the halo is colour, not object, so it is not in them). Normal
    maps are dropped: this models the colour views only. Strength 0, or no family on, returns ``views`` unchanged.
    """
    config = config or ImperfectionConfig()
    if config.strength == 0 or not config.families:
        return views
    images, masks = [], []
    for index in range(len(views)):
        image, alpha = _imperfect_view(views.images[index], views.masks[index], config, seed, index)
        images.append(to_uint8(image).astype(np.float32) / 255)
        masks.append(np.clip(alpha, 0.0, 1.0).astype(np.float32))
    return PosedViews(
        np.stack(images), np.stack(masks), views.intrinsics.copy(), views.cam_to_world.copy(), views.poses
    )


def as_grid(views: PosedViews):
    """The views' RGB as one 3 x 2 grid image (PIL, 8 bit), as Zero123++ writes ``views.png``."""
    from PIL import Image

    return Image.fromarray(join_grid(to_uint8(views.images)))


def as_user_views(views: PosedViews, config: ViewsConfig | None = None) -> PosedViews:
    """The views as ``img2mesh recon GRID`` reads them: the RGB grid alone, masks derived by ``config.mask``."""
    return PosedViews.from_grid(as_grid(views), config)


# ------------------------------------------------------------------------------------------------- one view


def _imperfect_view(
    image: np.ndarray, alpha: np.ndarray, config: ImperfectionConfig, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """One view (H, W, 3) on gray and its alpha (H, W) through every family that is on, in ``FAMILIES`` order."""
    k = config.strength
    on = set(config.families)

    def rng(family: Family) -> np.random.Generator:
        return np.random.default_rng([seed, index, FAMILIES.index(family)])

    image, alpha = image.astype(np.float64), alpha.astype(np.float64)
    displacement = view_displacement(config, seed, index, *alpha.shape)
    if displacement.any():
        image, alpha = _warp(image, alpha, displacement)
    if "photometric" in on:
        image = _photometric(rng("photometric"), image, alpha, config, k)
    if "silhouette" in on:
        image, alpha = _silhouette(rng("silhouette"), image, alpha, config, k)
    if "detail" in on:
        image, alpha = _lose_detail(image, alpha, config, k)
    if "noise" in on:
        image = image + rng("noise").normal(0.0, config.noise * k, image.shape)
    return np.clip(image, 0.0, 1.0), alpha


def view_displacement(config: ImperfectionConfig, seed: int, index: int, height: int, width: int) -> np.ndarray:
    """(2, H, W) offsets (rows, cols) to the source pixel that misregistration and inconsistency give view ``index``
    (zeros if neither is on): the view shows at each pixel what the exact render shows at pixel + offset."""
    displacement = np.zeros((2, height, width))
    k, on = config.strength, set(config.families)
    if "misregistration" in on:
        rng = np.random.default_rng([seed, index, FAMILIES.index("misregistration")])
        displacement += _similarity_displacement(rng, config, k, height, width)
    if "inconsistency" in on:
        rng = np.random.default_rng([seed, index, FAMILIES.index("inconsistency")])
        displacement += _smooth_field(rng, config.warp_cells, (2, height, width)) * (config.warp_px * k / np.sqrt(2))
    return displacement


def registered_views(views: PosedViews, config: ImperfectionConfig, seed: int = 0) -> PosedViews:
    """``views`` (imperfect, e.g. as a user's grid reads back) each read through the inverse of its true
    displacement (:func:`view_displacement`, dense): what a perfect registration of every view would give the fit,
    the upper bound of any registration. The other families' damage stays."""
    count, height, width = views.images.shape[:3]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = np.concatenate([views.images, views.masks[..., None]], axis=-1)  # colour and mask move together
    moved = np.empty_like(planes)
    for index in range(count):
        offset = view_displacement(config, seed, index, height, width)
        source_rows, source_cols = rows, cols
        for _ in range(3):  # the pixel p showing q is p = q - offset(p): a few fixed-point steps (smooth, small)
            at = [source_rows, source_cols]
            source_rows = rows - ndimage.map_coordinates(offset[0], at, order=1, mode="nearest")
            source_cols = cols - ndimage.map_coordinates(offset[1], at, order=1, mode="nearest")
        for channel in range(planes.shape[-1]):
            moved[index, ..., channel] = ndimage.map_coordinates(
                planes[index, ..., channel], [source_rows, source_cols], order=1, mode="nearest"
            )
    images, masks = moved[..., :3], moved[..., 3]
    return dataclasses.replace(views, images=images, masks=masks)


def implied_placement(views: PosedViews, config: ImperfectionConfig, seed: int = 0) -> np.ndarray:
    """(4, 4) the small similarity of the object (scale, rotation, translation about the origin) that best explains
    the views' displacements jointly (least squares over each view's object pixels).

    No reconstruction can tell this part of the imperfections from the object's own placement: six views each a
    little off in their own way agree on it, so a fit that honours what they agree on places the object there.
    Moving the ground truth by it and scoring it against itself gives the novel-view PSNR that placement alone costs.
    """
    height, width = views.size
    motions, moved = [], []
    for index in range(len(views)):
        rows, cols = np.nonzero(views.masks[index] > 0.5)
        if len(rows) == 0:
            continue
        offset = view_displacement(config, seed, index, height, width)[:, rows, cols]
        pixels = np.stack([cols + 0.5, rows + 0.5], -1)
        motions.append(similarity_motions(views.intrinsics[index], views.cam_to_world[index], pixels))  # (7, P, 2)
        moved.append(-offset[::-1].T)  # content moves opposite to the offset, as (x, y)
    basis = np.concatenate(motions, axis=1).reshape(7, -1).T
    theta = np.linalg.lstsq(basis, np.concatenate(moved).reshape(-1), rcond=None)[0]
    transform = np.eye(4)
    transform[:3, :3] = (1 + theta[6]) * Rotation.from_rotvec(theta[3:6]).as_matrix()
    transform[:3, 3] = theta[:3]
    return transform


def _similarity_displacement(
    rng: np.random.Generator, config: ImperfectionConfig, k: float, height: int, width: int
) -> np.ndarray:
    """(2, H, W) offsets (rows, cols) to the source pixel of a similarity warp about the view's centre."""
    shift = _draw(rng, config.shift_px * k, 2)
    angle = np.deg2rad(_draw(rng, config.rotation_deg * k))
    scale = 1.0 + _draw(rng, config.scale * k)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = rows + 0.5 - height / 2 - shift[0], cols + 0.5 - width / 2 - shift[1]
    # content rotated by +angle and scaled by `scale` about the centre, then shifted: sample the inverse map
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    source_x, source_y = cos * x + sin * y, -sin * x + cos * y
    return np.stack([source_y - (rows + 0.5 - height / 2), source_x - (cols + 0.5 - width / 2)])


def _draw(rng: np.random.Generator, sigma: float, size: int | None = None):
    """Normal draw(s) with standard deviation ``sigma``, truncated at two standard deviations."""
    return sigma * np.clip(rng.standard_normal(size), -2.0, 2.0)


def _smooth_field(rng: np.random.Generator, cells: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth random field (C, H, W) with RMS 1 per channel: a cubic interpolation of a coarse normal lattice."""
    channels, height, width = shape
    lattice = rng.normal(size=(channels, cells + 1, cells + 1))
    zoom = (height / (cells + 1), width / (cells + 1))
    field = np.stack([ndimage.zoom(c, zoom, order=3, mode="reflect", grid_mode=True) for c in lattice])
    field = field[:, :height, :width]
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / np.sqrt((field**2).mean(axis=(1, 2), keepdims=True))


def _warp(image: np.ndarray, alpha: np.ndarray, displacement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample the view at ``pixel + displacement`` (cubic), gray and transparent outside it."""
    height, width = alpha.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    coords = np.stack([rows + displacement[0], cols + displacement[1]])
    warped = [ndimage.map_coordinates(image[..., c], coords, order=3, cval=GRAY) for c in range(3)]
    return np.stack(warped, axis=-1), np.clip(ndimage.map_coordinates(alpha, coords, order=3, cval=0.0), 0, 1)


def _foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Object colour (H, W, 3) un-mixed from the gray where alpha >= 0.5, extended outwards from the nearest such
    pixel (an edge pixel's own colour is too mixed with the background to un-mix reliably)."""
    solid = alpha >= 0.5
    if not solid.any():
        return np.full_like(image, GRAY)
    colour = (image - (1 - alpha[..., None]) * GRAY) / np.maximum(alpha[..., None], 0.5)
    _, (rows, cols) = ndimage.distance_transform_edt(~solid, return_indices=True)
    return np.clip(colour[rows, cols], 0.0, 1.0)


def _photometric(
    rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray, config: ImperfectionConfig, k: float
) -> np.ndarray:
    """Exposure, white balance, gamma and smooth shading of the object's colours; the background stays gray."""
    gain = 1.0 + _draw(rng, config.exposure * k)
    balance = 1.0 + _draw(rng, config.white_balance * k, 3)
    balance /= balance.mean()
    gamma = np.exp(_draw(rng, config.gamma * k))
    shading = 1.0 + config.shading * k * _smooth_field(rng, config.shading_cells, (1, *alpha.shape))[0]
    colour = _foreground(image, alpha)
    changed = np.clip(gain * balance * shading[..., None] * colour**gamma, 0.0, 1.0)
    return image + alpha[..., None] * (changed - colour)


def _silhouette(
    rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray, config: ImperfectionConfig, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Outline dilated or eroded, feathered, and ringed by a halo; pixels away from the outline are untouched."""
    edge = _draw(rng, config.edge_px * k)
    feather = config.feather_px * k * rng.uniform(0.5, 1.5)
    halo = _draw(rng, config.halo * k)
    colour = _foreground(image, alpha)
    changed = ndimage.gaussian_filter(_grow(alpha, edge), feather) if feather > 0 else _grow(alpha, edge)
    image = image + (changed - alpha)[..., None] * (colour - GRAY)
    outside = ndimage.distance_transform_edt(changed < 0.5)
    ring = np.exp(-0.5 * (outside / max(config.halo_px, 1e-6)) ** 2) * (1 - changed) * (outside > 0)
    return image + halo * GRAY * ring[..., None], changed


def _grow(alpha: np.ndarray, pixels: float) -> np.ndarray:
    """``alpha`` dilated (``pixels`` > 0) or eroded (< 0) by a fractional number of pixels (cross footprint,
    blending the two nearest whole-pixel results)."""
    whole, fraction = int(abs(pixels)), abs(pixels) % 1
    step = ndimage.grey_dilation if pixels > 0 else ndimage.grey_erosion
    cross = ndimage.generate_binary_structure(2, 1)
    inner = alpha
    for _ in range(whole):
        inner = step(inner, footprint=cross, mode="nearest")
    return (1 - fraction) * inner + fraction * step(inner, footprint=cross, mode="nearest")


def _lose_detail(
    image: np.ndarray, alpha: np.ndarray, config: ImperfectionConfig, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """Down to ``detail_share`` of the side (scaled by strength) with antialiasing, back up (bicubic), then blur."""
    import torch
    import torch.nn.functional as F

    height, width = alpha.shape
    share = 1.0 / (1.0 + k * (1.0 / config.detail_share - 1.0))
    small = (max(1, round(height * share)), max(1, round(width * share)))
    stack = torch.from_numpy(np.concatenate([image, alpha[..., None]], axis=-1)).permute(2, 0, 1)[None]
    stack = F.interpolate(stack, size=small, mode="bicubic", antialias=True, align_corners=False)
    stack = F.interpolate(stack, size=(height, width), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    result = stack.numpy()
    sigma = config.blur_px * k
    if sigma > 0:
        result = ndimage.gaussian_filter(result, (sigma, sigma, 0))
    return result[..., :3], np.clip(result[..., 3], 0.0, 1.0)
