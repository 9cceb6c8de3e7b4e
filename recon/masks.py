"""Object masks of generated views: which pixels are the object, with soft anti-aliased edges.

Zero123++ paints its views on a flat background (gray 127 for the official weights, white for some fine-tunes) and
no alpha. Reconstruction needs the silhouettes, so this module recovers them. Three ways:

- ``"background"`` (the default; no model needed): estimate the background colour from the view's border, call a
  pixel background when its colour is within a tolerance of it **and** it is connected to the border through such
  pixels. Connectivity is what keeps gray parts of an object (a gray mug's body, a shaded gray bunny) from being
  cut out: they are enclosed by the object's own edge. Enclosed regions are cut out only when they look like the
  background itself (as close to its colour as the border is, and thick: a real opening such as a mug's handle,
  not the thin band where a gray object's shading crosses the background colour). A noisy background (a diffusion
  model's output) raises the tolerance and switches the decision to a 3x3 median of the view. Specks and
  pin-holes are cleaned, and the pixels of a band along the edge get fractional alpha by unmixing each one between
  the background colour and the most contrasted object colour next to it, as an anti-aliased renderer blends them.
  Known limit: a flat part of the object that is exactly the background colour and enclosed is taken for an opening
  (``mask_holes`` off keeps it, and fills real openings).
- ``"rembg"``: the rembg salient-object model, when its model file is already on disk (nothing is downloaded).
- ``"normals"``: the alpha of the normal ControlNet's maps, whose background is the zero normal (0.5 gray): the
  length of ``2 n - 1`` ramps from background to object between 0.2 and 0.6 (the trimap thresholds of the
  ControlNet's published matting post-process).

Every mask is quantised to 1/65535 steps, the precision of the 16-bit mask files of :mod:`recon.dataset`, so a
mask written and read back is bit-identical.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from recon.errors import InputError

if TYPE_CHECKING:
    from recon.config import ViewsConfig

#: Where rembg publishes the model files it downloads.
REMBG_MODELS_URL = "https://github.com/danielgatis/rembg/releases/tag/v0.0.0"
#: Width in pixels of the border ring the background colour is estimated from.
BORDER = 2
#: Spread of the border's colour distances (75th percentile) above which a view counts as noisy: half a level.
NOISE_FLOOR = 0.5 / 255
#: Normal-map length below which a pixel is background and above which it is object (ControlNet post-process).
NORMAL_BACKGROUND, NORMAL_OBJECT = 0.2, 0.6
#: Pixels inside the hard outline whose alpha is unmixed (soft edges of generated views span two to four pixels;
#: deeper, texture next to the outline starts to be read as partial coverage).
EDGE_DEPTH = 3
#: Largest distance of an edge pixel's colour from the background-to-object line, as a share of the object's
#: contrast, for it to count as a blend of the two.
MIX_RESIDUAL = 0.3
#: Contrast (in multiples of the background tolerance) an object colour needs for rings deeper than the outline's own.
DEEP_CONTRAST = 6


def compute_masks(
    images: np.ndarray, config: ViewsConfig | None = None, normal_maps: np.ndarray | None = None
) -> np.ndarray:
    """Object masks ``(N, H, W)`` float32 in [0, 1] of views ``(N, H, W, 3)`` float RGB in [0, 1].

    ``normal_maps`` (N, H, W, 3) in [0, 1] are the normal ControlNet's outputs for the same views, when it ran.
    """
    if config is None:
        from recon.config import ViewsConfig

        config = ViewsConfig()
    images = np.asarray(images, dtype=np.float32)
    method = config.mask
    if method == "auto":
        method = "normals" if normal_maps is not None else "background"
    if method == "background":
        masks = [
            background_mask(im, config.mask_threshold, holes=config.mask_holes, min_area=config.mask_min_area)
            for im in images
        ]
    elif method == "rembg":
        masks = rembg_masks(images, config.rembg_model)
    elif method == "normals":
        if normal_maps is None:
            raise InputError(
                'The "normals" mask method needs the normal ControlNet\'s maps, which these views do not have; '
                'use mask "background" or generate the views with normals on.'
            )
        masks = [normals_mask(n, min_area=config.mask_min_area) for n in np.asarray(normal_maps, dtype=np.float32)]
    else:
        raise ValueError(f"unknown mask method {method!r}")
    return quantize_mask(np.stack(masks))


def quantize_mask(mask: np.ndarray) -> np.ndarray:
    """Round to the 16-bit levels ``k / 65535`` (float32), the precision masks are stored at."""
    levels = np.round(np.clip(mask, 0.0, 1.0) * 65535).astype(np.uint16)
    return levels.astype(np.float32) / np.float32(65535)


# ------------------------------------------------------------------------------------------------ background


def background_mask(image: np.ndarray, threshold: float = 0.01, holes: bool = True, min_area: float = 0.0005):
    """Soft object mask (H, W) of one view on a flat background; see the module docstring for the method."""
    height, width = image.shape[:2]
    ring = _border_ring(height, width)
    background = np.median(image[ring], axis=0)
    distance = np.linalg.norm(image - background, axis=-1)
    border_spread = float(np.percentile(distance[ring], 75))
    if border_spread > NOISE_FLOOR:
        # A noisy background (a diffusion model's output, JPEG): decide on a 3x3 median, which keeps edges where
        # they are; the noise would otherwise force a tolerance wide enough to eat gray parts of the object.
        distance = np.linalg.norm(ndimage.median_filter(image, size=(3, 3, 1)) - background, axis=-1)
        border_spread = float(np.percentile(distance[ring], 75))
    # Noise-adaptive tolerance: three times the spread of the border's own colour distances (0 on a clean render),
    # never below the configured floor.
    tolerance = max(threshold, 3 * border_spread)

    near = distance <= tolerance
    labels, count = ndimage.label(near)
    is_background = np.zeros(count + 1, dtype=bool)
    is_background[np.unique(labels[ring])] = True
    is_background[0] = False
    min_pixels = min_area * height * width
    if holes and count:
        # An enclosed region is an opening in the object when it is big enough, at least 5 pixels thick, and as
        # close to the background colour as the border itself is; a gray part of the object drifts across the
        # tolerance instead, leaving only thin bands where its shading crosses the background colour.
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(np.ones_like(distance), labels, index)
        medians = ndimage.median(distance, labels, index)
        thick = np.zeros(count + 1, dtype=bool)
        thick[np.unique(labels[ndimage.binary_erosion(near, iterations=2)])] = True
        looks_like_background = (sizes >= min_pixels) & thick[1:] & (medians <= max(1.5 * border_spread, NOISE_FLOOR))
        is_background[1:] |= looks_like_background
    hard = ~is_background[labels]
    hard = _remove_small(hard, min_pixels)
    hard = ~_remove_small(~hard, min_pixels, keep_touching_border=True)
    return _soft_edges(image, hard, background, tolerance)


def _border_ring(height: int, width: int) -> np.ndarray:
    ring = np.zeros((height, width), dtype=bool)
    ring[:BORDER], ring[-BORDER:], ring[:, :BORDER], ring[:, -BORDER:] = True, True, True, True
    return ring


def _remove_small(mask: np.ndarray, min_pixels: float, keep_touching_border: bool = False) -> np.ndarray:
    """``mask`` without its connected components smaller than ``min_pixels``."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    if keep_touching_border:
        keep[np.unique(labels[_border_ring(*mask.shape)])] = True
    keep[0] = False
    return keep[labels]


def _soft_edges(image: np.ndarray, hard: np.ndarray, background: np.ndarray, tolerance: float) -> np.ndarray:
    """Fractional alpha along the silhouette of ``hard``: edge pixels unmixed between the background colour and the
    most contrasted object colour within reach, as an anti-aliased renderer blends them (compositing run backwards).

    The ring just outside the outline and the outline's own pixels are always unmixed; each deeper ring, up to
    :data:`EDGE_DEPTH`, only where the ring outside it is still below half coverage, i.e. where the edge is softer than
    a pixel. A generated view's edges are (resampled, blurred, feathered, haloed), and the background test calls a
    pixel object as soon as it leaves the background's tolerance, so one ring left the inner part of every soft ramp
    at alpha 1 (masks several per cent too fat); a crisp edge stops after one ring, so texture next to it is not read
    as partial coverage.
    """
    alpha = hard.astype(np.float32)
    rings = [ndimage.binary_dilation(hard, iterations=1) & ~hard]
    inner = hard
    for _ in range(EDGE_DEPTH):
        eroded = ndimage.binary_erosion(inner, iterations=1, border_value=1)
        rings.append(inner & ~eroded)
        inner = eroded
    band = np.logical_or.reduce(rings)
    if not band.any() or not hard.any():
        return alpha
    difference = image - background
    ys, xs = np.nonzero(band)
    span, pixel = _most_contrasted(difference, hard, ys, xs, EDGE_DEPTH + 1), difference[ys, xs]
    contrast = np.einsum("ij,ij->i", span, span)
    unmixed = np.clip(np.einsum("ij,ij->i", pixel, span) / np.maximum(contrast, 1e-12), 0.0, 1.0)
    # Where object and background colours are too alike the ratio is noise, and a pixel far off the line from the
    # background to that colour is texture, not a blend of the two: keep the hard decision there.
    off = pixel - unmixed[:, None] * span
    reliable = contrast > (3 * tolerance) ** 2
    reliable &= np.einsum("ij,ij->i", off, off) <= MIX_RESIDUAL**2 * contrast + (3 * tolerance) ** 2
    candidate = alpha.copy()
    candidate[ys, xs] = np.where(reliable, unmixed, alpha[ys, xs])
    # Deeper rings need a clearer contrast: on a noisy view a faint object's unmixed alpha is mostly noise.
    clear = np.zeros_like(hard)
    clear[ys, xs] = reliable & (contrast > (DEEP_CONTRAST * tolerance) ** 2)
    accepted = rings[0] | rings[1]
    for outer, ring in itertools.pairwise(rings[1:]):
        # the lowest coverage among this ring's outward neighbours; 2 where a pixel has none
        outward = ndimage.minimum_filter(np.where(outer & accepted, candidate, 2.0), size=3)
        accepted |= ring & clear & (outward < 0.5)
    return np.where(accepted, candidate, alpha).astype(np.float32)


def _most_contrasted(difference: np.ndarray, hard: np.ndarray, ys: np.ndarray, xs: np.ndarray, radius: int):
    """For the pixels ``(ys, xs)``, the colour difference (K, 3) to the background of the object pixel within
    ``radius`` (a disc) that differs most from it: the unmixed object colour next to a soft edge."""
    height, width = hard.shape
    contrast = np.where(hard, np.einsum("hwc,hwc->hw", difference, difference), -1.0)
    best = np.full(len(ys), -1.0)
    colour = np.zeros((len(ys), 3), dtype=difference.dtype)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            rows, cols = np.clip(ys + dy, 0, height - 1), np.clip(xs + dx, 0, width - 1)
            candidate = contrast[rows, cols]
            better = candidate > best
            best = np.where(better, candidate, best)
            colour[better] = difference[rows[better], cols[better]]
    return colour


# ------------------------------------------------------------------------------------------------ normals


def normals_mask(normal_map: np.ndarray, min_area: float = 0.0005) -> np.ndarray:
    """Soft object mask (H, W) from one normal-ControlNet map (RGB in [0, 1], background 0.5 gray)."""
    length = np.linalg.norm(normal_map * 2 - 1, axis=-1)
    alpha = np.clip((length - NORMAL_BACKGROUND) / (NORMAL_OBJECT - NORMAL_BACKGROUND), 0.0, 1.0)
    keep = _remove_small(alpha > 0.5, min_area * alpha.size)
    # Soft edges survive only next to a kept component; specks vanish entirely.
    near_kept = ndimage.binary_dilation(keep, iterations=2)
    return np.where(near_kept, alpha, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------ rembg


def rembg_masks(images: np.ndarray, model: str = "u2net") -> list[np.ndarray]:
    """Masks by rembg's ``model``, whose file must already be on disk (nothing is downloaded)."""
    from PIL import Image

    session = rembg_session(model, download=False, instead='use mask "background"')
    pixels = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return [np.asarray(rembg_mask(Image.fromarray(p, "RGB"), session), dtype=np.float32) / 255 for p in pixels]


def rembg_mask(rgb, session):
    """rembg's soft foreground mask (PIL "L", same size) of an RGB PIL image."""
    from rembg import remove

    return remove(rgb, session=session, only_mask=True)


@functools.cache
def rembg_session(model: str, download: bool, instead: str):
    """A rembg session for a model name or a custom ``.onnx`` path, kept for reuse across images.

    Without ``download`` a model file that is not on disk is an :class:`InputError` naming it and where to get it.
    ``instead`` (what the user can do instead of running rembg) ends every error sentence.
    """
    try:
        from rembg import new_session
        from rembg.sessions import sessions
    except ImportError:
        raise InputError(f'rembg is not installed; `pip install "rembg[cpu]"`, or {instead}.') from None
    if model.endswith(".onnx") or os.sep in model:
        return new_session("u2net_custom", model_path=str(_custom_model_file(Path(model))))
    session_class = sessions.get(model)
    custom = ("u2net_custom", "dis_custom", "ben_custom")
    if session_class is None or model in custom or not session_class.is_local():
        local = sorted(n for n, c in sessions.items() if c.is_local() and n not in custom)
        raise InputError(
            f"rembg has no model {model!r}; set the rembg model to a .onnx path or one of: {', '.join(local)}."
        )
    filename = f"{model}.onnx"
    folder = Path(session_class.model_dir())
    if not download and session_class.resolve_existing(filename) is None:
        raise InputError(
            f"rembg's model file {folder / filename} is not on this machine and nothing is downloaded here; fetch it "
            f"once with `rembg d {model}` or from {REMBG_MODELS_URL} into {folder} (or set U2NET_HOME to the folder "
            f"holding it), or {instead}."
        )
    try:
        return new_session(model)
    except (OSError, ValueError) as exc:  # rembg downloads through pooch/requests, whose errors are OSErrors
        raise InputError(
            f"rembg's model file {filename} could not be downloaded ({exc.__class__.__name__}); download it from "
            f"{REMBG_MODELS_URL} into {folder}, or {instead}."
        ) from None


def _custom_model_file(path: Path) -> Path:
    """A custom rembg model path that exists and lies where rembg agrees to load it from."""
    from rembg.sessions.u2net_custom import U2netCustomSession

    if not path.is_file():
        raise InputError(f"The rembg model file {path} does not exist; check the rembg model in your config.")
    try:
        return Path(U2netCustomSession.validate_model_path(model_path=str(path)))
    except ValueError:
        home = U2netCustomSession.rembg_home()
        raise InputError(
            f"rembg loads custom models only from under {home}; move {path.name} there or set U2NET_HOME to "
            f"{path.parent.resolve()}."
        ) from None
