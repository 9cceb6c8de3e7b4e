"""Input photo → square RGBA cut-out with the object centred at a fixed share of the side.

Zero123++ was trained on renders of single objects, centred, filling most of the frame, on a neutral background
(the pipeline composites RGBA onto gray 127, "zero" for the SD VAE). A photo rarely looks like that, so it is
brought there: EXIF rotation applied, background removed (an existing cut-out alpha is kept, otherwise rembg),
cropped to the object's alpha bounding box and padded to a square in which the object's longer side takes
``object_share`` of the side (0.85, as InstantMesh does before calling Zero123++). The cut-out stays RGBA so that
the mask survives for later stages; the Zero123++ pipeline composites it onto gray itself.

rembg downloads its models on first use. That is fine online, but offline (``HF_HUB_OFFLINE=1``, the flag the
whole tool honours) the model file must already be on disk, so it is looked up before rembg is asked for it and a
missing file is reported with its expected path and where to get it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from img2mesh.config import PreprocessConfig
from img2mesh.errors import InputError
from img2mesh.zero123pp.weights import hub_offline

#: Formats Pillow reports for the files we accept (MPO is the multi-picture JPEG many phone cameras write).
READABLE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}

#: Alpha at or above this counts as object when measuring its bounding box, so faint matting halos don't widen it.
OBJECT_ALPHA = 128

#: Longer side a photo is reduced to as it loads (the cut-out is 512 px; a 100-megapixel decode costs gigabytes).
MAX_INPUT_SIDE = 4096

log = logging.getLogger(__name__)

#: An existing alpha channel counts as a cut-out when at least this share of the pixels is transparent.
CUTOUT_MIN_TRANSPARENT = 0.01


def load_image(path: str | Path) -> Image.Image:
    """A PNG, JPEG or WebP file as an upright RGB or RGBA image (EXIF orientation applied)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input image {path} does not exist; check the path.")
    if path.is_dir():
        raise InputError(f"Input {path} is a folder, not an image; pass a PNG, JPEG or WebP file.")
    try:
        # A big photo is ordinary input here, not a decompression bomb: it is reduced below, with a line of notice.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                fmt = opened.format
                if fmt not in READABLE_FORMATS:
                    raise InputError(
                        f"Input image {path} is a {fmt} file; img2mesh reads PNG, JPEG and WebP, convert it."
                    )
                original = opened.size
                opened.draft(opened.mode, (MAX_INPUT_SIDE, MAX_INPUT_SIDE))  # JPEG decodes at 1/2..1/8 scale
                opened.load()
                image = ImageOps.exif_transpose(opened)
        if max(image.size) > MAX_INPUT_SIDE:
            image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE), Image.Resampling.LANCZOS)
        if sorted(image.size) != sorted(original):
            log.warning("%s is %dx%d pixels; downscaled to %dx%d.", path, *original, *image.size)
    except UnidentifiedImageError:
        raise InputError(f"Input {path} is not a readable image; pass a PNG, JPEG or WebP file.") from None
    except PermissionError:
        raise InputError(f"Input image {path} cannot be opened (permission denied); check its permissions.") from None
    except Image.DecompressionBombError:
        raise InputError(f"Input image {path} is too large to decode safely; downscale it first.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow signals truncated or corrupt data with these while decoding.
        raise InputError(f"Input image {path} is corrupt or truncated ({exc}); re-export or re-download it.") from None
    if image.mode.startswith("I"):  # 16-bit grayscale PNG: a plain convert would clip everything above 255
        image = Image.fromarray((np.asarray(image, np.float64) / 257).round().clip(0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def preprocess(image: Image.Image, config: PreprocessConfig | None = None) -> Image.Image:
    """A ``config.size`` square RGBA cut-out with the object centred, its longer side ``object_share`` of the side."""
    config = config or PreprocessConfig()
    if not 0.0 < config.object_share <= 1.0:
        raise InputError(f"object_share is {config.object_share}; it must be in (0, 1], e.g. 0.85.")
    if config.size < 16:
        raise InputError(f"The cut-out size is {config.size} pixels; use at least 16 (the default is 512).")
    cutout = remove_background(image, config)
    return center_object(cutout, config.object_share, config.size)


def remove_background(image: Image.Image, config: PreprocessConfig | None = None) -> Image.Image:
    """The image as RGBA whose alpha separates the object from the background, per ``config.remove_bg``."""
    config = config or PreprocessConfig()
    if config.remove_bg == "none" or (config.remove_bg == "auto" and has_cutout_alpha(image)):
        return image.convert("RGBA")
    rgb = image.convert("RGB")
    from recon.masks import rembg_mask, rembg_session

    instead = "pass --remove-bg none with an RGBA cut-out"
    mask = rembg_mask(rgb, rembg_session(config.rembg_model, download=not hub_offline(), instead=instead))
    cutout = rgb.convert("RGBA")
    cutout.putalpha(mask)
    return cutout


def check_background_removal(images: Iterable[str | Path | Image.Image], config: PreprocessConfig) -> None:
    """Fail now, before any model loads, when one of ``images`` needs rembg and its model cannot be had (missing
    offline, unknown name): rembg's session is opened (and kept for the job) for the first image that needs it.

    An unreadable image is left to the job, which reports it as that input's failure.
    """
    if config.remove_bg == "none":
        return
    for image in images:
        if config.remove_bg == "auto":
            try:
                photo = image if isinstance(image, Image.Image) else load_image(image)
            except InputError:
                continue
            if has_cutout_alpha(photo):
                continue
        from recon.masks import rembg_session

        instead = "pass --remove-bg none with an RGBA cut-out"
        rembg_session(config.rembg_model, download=not hub_offline(), instead=instead)
        return


def has_cutout_alpha(image: Image.Image) -> bool:
    """Whether the image already carries a cut-out: an alpha channel with both transparent and opaque pixels."""
    if "A" not in image.getbands():
        return False
    alpha = np.asarray(image.getchannel("A"))
    transparent = float(np.mean(alpha < OBJECT_ALPHA))
    return CUTOUT_MIN_TRANSPARENT <= transparent < 1.0


def center_object(cutout: Image.Image, object_share: float, size: int) -> Image.Image:
    """Crop an RGBA cut-out to a square around its alpha bounding box and resize it to ``size``."""
    alpha = np.asarray(cutout.getchannel("A"))
    rows = np.flatnonzero((alpha >= OBJECT_ALPHA).any(axis=1))
    cols = np.flatnonzero((alpha >= OBJECT_ALPHA).any(axis=0))
    if rows.size == 0:
        raise InputError(
            "Nothing of the object is left after background removal (the alpha channel is empty); "
            "use a photo where the object is clearly visible, or --remove-bg none."
        )
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = round(max(bottom - top, right - left) / object_share)
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    x0, y0 = round(centre_x - side / 2), round(centre_y - side / 2)
    # Pillow fills the part of the box outside the image with transparent black: the padding.
    square = cutout.crop((x0, y0, x0 + side, y0 + side))
    # Pillow resizes RGBA premultiplied, so transparent black does not darken the object's edges.
    return square.resize((size, size), Image.Resampling.LANCZOS)
