"""Posed views as a NeRF dataset folder (``transforms.json``) that nerfstudio and instant-ngp read as-is.

One file serves both tools because they share the original NeRF format: OpenGL camera-to-world matrices under
``frames[].transform_matrix`` in a z-up world, which is exactly :mod:`recon.cameras`' convention, so the matrices
are written unchanged. Layout::

    transforms.json
    images/00.png ... 05.png   RGBA, 8 bit: the view's colours, the object mask as alpha
    masks/00.png ... 05.png    the object masks, 16-bit gray (full precision; what read_dataset reads)
    normals.npz                per-view normals, only when the normal ControlNet ran

Keys written, by reader:

- nerfstudio: ``camera_model`` ("OPENCV", no distortion), ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``,
  ``frames[].file_path`` and ``transform_matrix``. Its ``mask_path`` means "train only on pixels where the mask
  is non-zero": pointing it at the object masks would hide every background pixel from nerfstudio, so it never
  learns that the space around the object is empty. The RGBA images already carry the silhouettes (train with
  ``--pipeline.model.background-color random``), so ``mask_path`` is written only on request
  (``nerfstudio_masks=True``), for methods that should see the object alone.
- instant-ngp: ``camera_angle_x`` / ``camera_angle_y`` (radians), ``aabb_scale`` 1 and ``aabb`` (the object's
  box, [-1, 1]^3, which instant-ngp maps onto its unit cube; ``scale`` and ``offset`` say the same for older
  versions), ``up``; it takes the mask from the images' alpha channel.
- img2mesh (ignored by both tools): ``img2mesh.poses`` / ``radius`` and ``frames[].object_mask_path``, so that
  :func:`read_dataset` gives back the exact :class:`~recon.posed_views.PosedViews` that was written.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from recon.config import ViewsConfig
from recon.errors import InputError
from recon.masks import compute_masks, quantize_mask
from recon.posed_views import ARCHIVE_NAME, PosedViews, open_image

#: Half side of the box the object is assumed to fill (the convention of recon.cameras).
SCENE_HALF_EXTENT = 1.0
#: Version of the img2mesh-specific part of transforms.json.
FORMAT_VERSION = 1


def write_dataset(
    views: PosedViews, out_dir: str | Path, nerfstudio_masks: bool = False, images_from: str | Path | None = None
) -> Path:
    """Write ``views`` as a dataset folder; returns the path of its ``transforms.json``.

    ``transforms.json`` is written last (under a temporary name, then renamed), so a folder that has it is
    complete. ``nerfstudio_masks`` adds ``mask_path`` to every frame; see the module docstring for why it is off.
    ``images_from``: a folder where :meth:`PosedViews.save` wrote these same views; its ``NN.png`` are the images'
    exact bytes (the same RGBA arrays, the same encoder), so they are copied rather than encoded a second time.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    height, width = views.size
    rgba = views.rgba_uint8() if images_from is None else None
    frames = []
    for i in range(len(views)):
        image_path, mask_path = f"images/{i:02d}.png", f"masks/{i:02d}.png"
        if rgba is None:
            shutil.copyfile(Path(images_from) / f"{i:02d}.png", out_dir / image_path)
        else:
            Image.fromarray(rgba[i], "RGBA").save(out_dir / image_path)
        Image.fromarray(_mask_to_uint16(views.masks[i])).save(out_dir / mask_path)
        frame = {"file_path": image_path, "transform_matrix": views.cam_to_world[i].tolist()}
        frame["object_mask_path"] = mask_path
        if nerfstudio_masks:
            frame["mask_path"] = mask_path
        frames.append(frame)

    shared = all(np.array_equal(k, views.intrinsics[0]) for k in views.intrinsics)
    if not shared:
        for frame, k in zip(frames, views.intrinsics, strict=True):
            frame.update(_intrinsics_keys(k, width, height))
    transforms: dict = {"camera_model": "OPENCV", "w": width, "h": height}
    if shared:
        transforms.update(_intrinsics_keys(views.intrinsics[0], width, height))
    extent = SCENE_HALF_EXTENT
    transforms.update(
        {
            "aabb_scale": 1,
            "aabb": [[-extent] * 3, [extent] * 3],
            "scale": 0.5 / extent,
            "offset": [0.5, 0.5, 0.5],
            "up": [0.0, 0.0, 1.0],
        }
    )
    extra: dict = {"format": FORMAT_VERSION, "poses": views.poses}
    if views.normals is not None:
        np.savez(out_dir / "normals.npz", normals=views.normals.astype(np.float32))
        extra["normals"] = "normals.npz"
    transforms["img2mesh"] = extra
    transforms["frames"] = frames

    path = out_dir / "transforms.json"
    partial = out_dir / ".transforms.json.partial"
    partial.write_text(json.dumps(transforms, indent=2) + "\n")
    partial.replace(path)
    return path


def read_dataset(folder: str | Path, config: ViewsConfig | None = None) -> PosedViews:
    """Load a dataset folder (ours, or any nerfstudio / NeRF-synthetic ``transforms.json``) as posed views.

    Masks come from ``object_mask_path`` when present, else from the images' alpha channel, else they are
    computed by ``config.mask``. A folder written by :func:`write_dataset` comes back exactly as it was written.
    """
    folder = Path(folder)
    meta = _read_transforms(folder / "transforms.json")
    frames = meta["frames"]
    images, masks, intrinsics, cam_to_world = [], [], [], []
    for i, frame in enumerate(frames):
        pixels = _read_pixels(folder, frame, i)
        images.append(pixels[..., :3])
        masks.append(_read_mask(folder, frame, pixels))
        height, width = pixels.shape[:2]
        intrinsics.append(_intrinsics_from(frame, meta, width, height, i))
        cam_to_world.append(_matrix(frame, i))
    if len({im.shape for im in images}) != 1:
        raise InputError(f"The images of {folder} differ in size; a dataset needs views of one size.")
    images_array = np.stack(images)
    needs_masks = [i for i, m in enumerate(masks) if m is None]
    if needs_masks:
        computed = compute_masks(images_array[needs_masks], config or ViewsConfig())
        for i, mask in zip(needs_masks, computed, strict=True):
            masks[i] = mask
    extra = meta.get("img2mesh", {})
    normals = None
    if "normals" in extra:
        with np.load(folder / extra["normals"]) as data:
            normals = data["normals"]
    return PosedViews(
        images=images_array,
        masks=np.stack(masks),
        intrinsics=np.stack(intrinsics),
        cam_to_world=np.stack(cam_to_world),
        poses=str(extra.get("poses", "custom")),
        normals=normals,
    )


# ------------------------------------------------------------------------------------------------ helpers


def read_views(path: str | Path, config: ViewsConfig | None = None) -> PosedViews:
    """Posed views from any form they are kept in: a grid image, a folder :meth:`PosedViews.save` wrote, a dataset
    folder with ``transforms.json``, or a folder of six views."""
    path = Path(path)
    if path.is_file():
        return PosedViews.from_grid(open_image(path), config)
    if (path / "transforms.json").is_file():
        return read_dataset(path, config)
    if (path / ARCHIVE_NAME).is_file():
        return PosedViews.load(path)
    if path.is_dir():
        return PosedViews.from_folder(path, config)
    raise InputError(f"{path} does not exist; pass a 640x960 views image or a folder of six views.")


def _intrinsics_keys(k: np.ndarray, width: int, height: int) -> dict:
    fx, fy, cx, cy = float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    return {
        "fl_x": fx,
        "fl_y": fy,
        "cx": cx,
        "cy": cy,
        "camera_angle_x": 2 * math.atan(width / (2 * fx)),
        "camera_angle_y": 2 * math.atan(height / (2 * fy)),
    }


def _mask_to_uint16(mask: np.ndarray) -> np.ndarray:
    return np.round(np.clip(mask, 0.0, 1.0) * 65535).astype(np.uint16)


def _read_transforms(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path.parent} has no transforms.json; pass a dataset folder written by img2mesh.")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc.__class__.__name__}); rewrite it with img2mesh dataset."
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path} lists no frames; a dataset needs a non-empty 'frames' list.")
    return meta


def _read_pixels(folder: Path, frame: dict, index: int) -> np.ndarray:
    """A frame's image as float32 (H, W, 3 or 4) in [0, 1]."""
    if "file_path" not in frame:
        raise InputError(f"Frame {index} of {folder / 'transforms.json'} has no file_path.")
    path = folder / frame["file_path"]
    try:
        with Image.open(path) as image:
            mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
            return np.asarray(image.convert(mode), dtype=np.float32) / 255
    except (OSError, ValueError):
        raise InputError(
            f"Cannot read image {path} named by frame {index}; restore it or rewrite the dataset."
        ) from None


def _read_mask(folder: Path, frame: dict, pixels: np.ndarray) -> np.ndarray | None:
    """The object mask of a frame, or None when it has to be computed from the colours."""
    if "object_mask_path" in frame:
        path = folder / frame["object_mask_path"]
        try:
            with Image.open(path) as image:
                levels = np.asarray(image)
        except (OSError, ValueError):
            raise InputError(f"Cannot read mask {path}; restore it or rewrite the dataset.") from None
        scale = 65535 if levels.dtype != np.uint8 else 255
        return quantize_mask(levels.astype(np.float32) / np.float32(scale))
    if pixels.shape[-1] == 4 and float(pixels[..., 3].min()) < 1.0:
        return quantize_mask(pixels[..., 3])
    return None


def _intrinsics_from(frame: dict, meta: dict, width: int, height: int, index: int) -> np.ndarray:
    """Pinhole K of a frame: per-frame keys win over top-level ones; a field of view stands in for focals."""

    def value(key: str):
        return frame.get(key, meta.get(key))

    fx, fy = value("fl_x"), value("fl_y")
    if fx is None and value("camera_angle_x") is not None:
        fx = width / (2 * math.tan(value("camera_angle_x") / 2))
    if fy is None and value("camera_angle_y") is not None:
        fy = height / (2 * math.tan(value("camera_angle_y") / 2))
    fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
    if fx is None:
        raise InputError(f"Frame {index} of transforms.json has no focal length (fl_x or camera_angle_x).")
    cx, cy = value("cx"), value("cy")
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def _matrix(frame: dict, index: int) -> np.ndarray:
    try:
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape not in ((4, 4), (3, 4)):
        raise InputError(f"Frame {index} of transforms.json needs a 4x4 transform_matrix.")
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    return matrix
