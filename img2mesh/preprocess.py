"""Input photo → square RGBA cut-out with the object centred at a fixed share of the side.

Zero123++ was trained on renders of single objects, centred, filling most of the frame, on a neutral background
(the pipeline composites RGBA onto gray 127, "zero" for the SD VAE). A photo rarely looks like that, so it is
brought there: EXIF rotation applied, background removed (an existing cut-out alpha is kept, otherwise rembg),
cropped to the object's alpha bounding box and padded to a square in which the object's longer side takes
``object_share`` of the side (0.85, as InstantMesh does before calling Zero123++). The cut-out stays RGBA so that
the mask survives for later stages; :func:`composite_on_gray` gives what the diffusion model actually sees.

rembg downloads its models on first use. That is fine online, but offline (``HF_HUB_OFFLINE=1``, the flag the
whole tool honours) the model file must already be on disk, so it is looked up before rembg is asked for it and a
missing file is reported with its expected path and where to get it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from img2mesh.config import PreprocessConfig
from img2mesh.errors import InputError
from img2mesh.zero123pp.weights import hub_offline

if TYPE_CHECKING:
    from rembg.sessions.base import BaseSession

#: Formats Pillow reports for the files we accept (MPO is the multi-picture JPEG many phone cameras write).
READABLE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}

#: Alpha at or above this counts as object when measuring its bounding box, so faint matting halos don't widen it.
OBJECT_ALPHA = 128

#: An existing alpha channel counts as a cut-out when at least this share of the pixels is transparent.
CUTOUT_MIN_TRANSPARENT = 0.01

#: Background colour the Zero123++ pipeline composites RGBA input onto (reference ``to_rgb_image``).
GRAY = 127

#: Where rembg publishes the model files it downloads.
REMBG_MODELS_URL = "https://github.com/danielgatis/rembg/releases/tag/v0.0.0"


def load_image(path: str | Path) -> Image.Image:
    """A PNG, JPEG or WebP file as an upright RGB or RGBA image (EXIF orientation applied)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input image {path} does not exist; check the path.")
    if path.is_dir():
        raise InputError(f"Input {path} is a folder, not an image; pass a PNG, JPEG or WebP file.")
    try:
        with Image.open(path) as opened:
            fmt = opened.format
            if fmt not in READABLE_FORMATS:
                raise InputError(f"Input image {path} is a {fmt} file; img2mesh reads PNG, JPEG and WebP, convert it.")
            opened.load()
            image = ImageOps.exif_transpose(opened)
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
    mask = rembg_mask(rgb, config.rembg_model)
    cutout = rgb.convert("RGBA")
    cutout.putalpha(mask)
    return cutout


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


def composite_on_gray(cutout: Image.Image, gray: int = GRAY) -> Image.Image:
    """The RGB image Zero123++ conditions on: the cut-out pasted through its alpha onto a uniform gray."""
    canvas = Image.new("RGB", cutout.size, (gray, gray, gray))
    canvas.paste(cutout.convert("RGB"), mask=cutout.convert("RGBA").getchannel("A"))
    return canvas


def rembg_mask(rgb: Image.Image, model: str) -> Image.Image:
    """rembg's soft foreground mask ("L", same size) of an RGB image."""
    from rembg import remove

    return remove(rgb, session=rembg_session(model), only_mask=True)


@functools.cache
def rembg_session(model: str) -> BaseSession:
    """A rembg session for a model name or a custom ``.onnx`` path, kept for reuse across images."""
    from rembg import new_session
    from rembg.sessions import sessions

    if model.endswith(".onnx") or os.sep in model:
        return new_session("u2net_custom", model_path=str(_custom_model_file(Path(model))))
    session_class = sessions.get(model)
    custom = ("u2net_custom", "dis_custom", "ben_custom")
    if session_class is None or model in custom or not session_class.is_local():
        local = sorted(n for n, c in sessions.items() if c.is_local() and n not in custom)
        raise InputError(
            f"rembg model {model!r} is unknown; set rembg_model to a .onnx path or one of: {', '.join(local)}."
        )
    fname = f"{model}.onnx"
    if session_class.resolve_existing(fname) is None:
        expected = Path(session_class.model_dir()) / fname
        if hub_offline():
            raise InputError(
                f"The background-removal model file {expected} is missing and downloads are off (HF_HUB_OFFLINE); "
                f"download {fname} from {REMBG_MODELS_URL} into {expected.parent} (or set U2NET_HOME to the folder "
                "holding it), or pass --remove-bg none with an RGBA cut-out."
            )
    try:
        return new_session(model)
    except (OSError, ValueError) as exc:  # rembg downloads through pooch/requests, whose errors are OSErrors
        raise InputError(
            f"The background-removal model {fname} could not be downloaded ({exc.__class__.__name__}); "
            f"download it from {REMBG_MODELS_URL} into {Path(session_class.model_dir())}, "
            "or pass --remove-bg none with an RGBA cut-out."
        ) from None


def _custom_model_file(path: Path) -> Path:
    """A custom rembg model path that exists and lies where rembg agrees to load it from."""
    from rembg.sessions.u2net_custom import U2netCustomSession

    if not path.is_file():
        raise InputError(f"The rembg model file {path} does not exist; check rembg_model in your config.")
    try:
        return Path(U2netCustomSession.validate_model_path(model_path=str(path)))
    except ValueError:
        home = U2netCustomSession.rembg_home()
        raise InputError(
            f"rembg loads custom models only from under {home}; move {path.name} there or set U2NET_HOME to "
            f"{path.parent.resolve()}."
        ) from None
