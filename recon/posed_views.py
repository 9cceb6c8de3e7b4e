"""PosedViews: the six Zero123++ views with their masks and cameras, the hand-off between 2D and 3D.

Zero123++ draws its six views as one 3 x 2 grid on a flat gray background, with no cameras attached: the cameras
are implied by the model version (:mod:`recon.cameras`). This module turns that grid, or a folder of six view files,
into :class:`PosedViews` (pixels + masks + cameras), and stores it losslessly so a later stage or a rerun reads back
exactly what was computed. Conventions (world, camera, pixel) are those of :mod:`recon.cameras`.

Storage: :meth:`PosedViews.save` writes ``NN.png`` (RGBA, 8 bit, for people and other tools) and
``posed_views.npz`` (every array at full precision; the file :meth:`PosedViews.load` reads). Colours are 8-bit
values as float32 ``k / 255``, so a view that came from a PNG goes through any number of saves unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from recon.cameras import GRID_COLS, GRID_ROWS, VIEW_SIZE, zero123pp_cameras
from recon.config import ViewsConfig
from recon.errors import InputError
from recon.masks import compute_masks, quantize_mask

#: Image files a folder of views or of photos may hold (the one list every folder scan uses).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: Zero123++'s background: the 8-bit gray (the SD VAE's zero) behind its input and every view it draws.
BACKGROUND_GRAY = 127

#: Name of the full-precision archive written by :meth:`PosedViews.save`.
ARCHIVE_NAME = "posed_views.npz"

#: Number of views Zero123++ produces.
NUM_VIEWS = GRID_ROWS * GRID_COLS


@dataclass
class PosedViews:
    """N views of one object, each with an RGB image, an alpha mask and a pinhole camera."""

    images: np.ndarray
    """RGB, float32 in [0, 1], shape (N, H, W, 3), sRGB values as the diffusion model produced them."""
    masks: np.ndarray
    """Alpha, float32 in [0, 1], shape (N, H, W); soft edges allowed."""
    intrinsics: np.ndarray
    """Pinhole intrinsics in pixels, shape (N, 3, 3)."""
    cam_to_world: np.ndarray
    """OpenGL camera-to-world matrices, shape (N, 4, 4)."""
    poses: str = "v1.2"
    """Which Zero123++ pose table the cameras come from ("v1.2", "v1.1", or "custom")."""
    normals: np.ndarray | None = None
    """Optional camera-space unit normals, float32 (N, H, W, 3), from the normal ControlNet when it ran; zero
    where the ControlNet saw background. Camera space is the OpenGL frame of :mod:`recon.cameras` (a surface facing
    the camera has normal +Z); ``recon.evaluation.oracle.oracle_views(..., normals=True)`` renders exact ones."""

    def __post_init__(self) -> None:
        n, h, w = self.images.shape[:3]
        if self.images.shape != (n, h, w, 3):
            raise ValueError(f"images must be (N, H, W, 3), got {self.images.shape}")
        if self.masks.shape != (n, h, w):
            raise ValueError(f"masks must be {(n, h, w)}, got {self.masks.shape}")
        if self.intrinsics.shape != (n, 3, 3) or self.cam_to_world.shape != (n, 4, 4):
            raise ValueError("intrinsics must be (N, 3, 3) and cam_to_world (N, 4, 4)")
        if self.normals is not None and self.normals.shape != (n, h, w, 3):
            raise ValueError(f"normals must be {(n, h, w, 3)}, got {self.normals.shape}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every view."""
        return self.images.shape[1], self.images.shape[2]

    # ----------------------------------------------------------------------------------------------- builders

    @classmethod
    def from_grid(
        cls,
        grid_image: Image.Image | np.ndarray,
        config: ViewsConfig | None = None,
        masks: np.ndarray | None = None,
        normal_grid: Image.Image | np.ndarray | None = None,
    ) -> PosedViews:
        """Posed views of a Zero123++ grid (3 rows x 2 columns of square views, 640x960 as the model makes it).

        ``masks`` (6, H, W) wins when given (rounded to the 16-bit levels masks are stored at); otherwise an RGBA
        grid's alpha is used if it is not fully opaque, and else masks are computed by ``config.mask``.
        ``normal_grid`` is the normal ControlNet's grid of the same views (RGB, background 0.5 gray); it gives
        :attr:`normals` and the "normals" masks.
        """
        config = config or ViewsConfig()
        tiles = _stack(split_grid(_as_image(grid_image)))
        normal_maps = None if normal_grid is None else _stack(split_grid(_as_image(normal_grid)))[..., :3]
        if normal_maps is not None and normal_maps.shape != (*tiles.shape[:3], 3):
            raise InputError(
                f"The normal-map grid has views of {normal_maps.shape[1]} pixels but the colour grid has "
                f"{tiles.shape[1]}; pass the normal maps made from these views."
            )
        return cls._from_tiles(tiles, config, masks, normal_maps)

    @classmethod
    def from_folder(cls, folder: str | Path, config: ViewsConfig | None = None) -> PosedViews:
        """Posed views of a folder holding exactly six square view images (``00.png`` ... ``05.png``, grid order).

        RGBA views keep their alpha as masks; opaque ones get masks computed by ``config.mask``.
        """
        config = config or ViewsConfig()
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder; pass a folder of six views or a 640x960 views image.")
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
            key=_natural_key,
        )
        if len(files) != NUM_VIEWS:
            raise InputError(
                f"Folder {folder} holds {len(files)} images but a views folder needs exactly six "
                f"(00.png ... 05.png in grid order); remove the others or pass the 640x960 views image instead."
            )
        views = [open_image(p) for p in files]
        sizes = {v.size for v in views}
        if len(sizes) != 1 or views[0].width != views[0].height:
            listed = ", ".join(f"{p.name} {v.width}x{v.height}" for p, v in zip(files, views, strict=True))
            raise InputError(f"The six views in {folder} must be square and of one size, but they are: {listed}.")
        return cls._from_tiles(_stack(views), config, None, None)

    @classmethod
    def _from_tiles(
        cls, tiles: np.ndarray, config: ViewsConfig, masks: np.ndarray | None, normal_maps: np.ndarray | None
    ) -> PosedViews:
        """Views from (6, S, S, 3 or 4) float tiles: masks from the argument, the alpha channel, or computed."""
        images = np.ascontiguousarray(tiles[..., :3])
        size = images.shape[1]
        if masks is not None:
            masks = np.asarray(masks, dtype=np.float32)
            if masks.shape != images.shape[:3]:
                raise ValueError(f"masks must be {images.shape[:3]}, got {masks.shape}")
            masks = quantize_mask(masks)  # 16-bit levels, so a dataset written from these views reads back exactly
        elif tiles.shape[-1] == 4 and float(tiles[..., 3].min()) < 1.0:
            masks = np.ascontiguousarray(tiles[..., 3])
        else:
            masks = compute_masks(images, config, normal_maps=normal_maps)
        k, c2w = zero123pp_cameras(config.poses, config.radius, size)
        normals = None if normal_maps is None else _unit_normals(normal_maps)
        return cls(images, masks, k, c2w, poses=config.poses, normals=normals)

    # ------------------------------------------------------------------------------------------ save / load

    def save(self, folder: str | Path) -> Path:
        """Write ``NN.png`` (RGBA, masked, 8 bit) and ``posed_views.npz`` (full precision) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, rgba in enumerate(self.rgba_uint8()):
            Image.fromarray(rgba, "RGBA").save(folder / f"{i:02d}.png")
        arrays = {
            "images": self.images.astype(np.float32),
            "masks": self.masks.astype(np.float32),
            "intrinsics": self.intrinsics,
            "cam_to_world": self.cam_to_world,
            "poses": np.array(self.poses),
        }
        if self.normals is not None:
            arrays["normals"] = self.normals.astype(np.float32)
        # Written last and renamed into place: a folder whose archive exists is complete.
        partial = folder / f".{ARCHIVE_NAME}.partial"
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
        partial.replace(folder / ARCHIVE_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PosedViews:
        """Read what :meth:`save` wrote, bit for bit."""
        archive = Path(folder) / ARCHIVE_NAME
        if not archive.is_file():
            raise InputError(f"{folder} has no {ARCHIVE_NAME}; pass a folder written by PosedViews.save.")
        with np.load(archive) as data:
            return cls(
                images=data["images"],
                masks=data["masks"],
                intrinsics=data["intrinsics"],
                cam_to_world=data["cam_to_world"],
                poses=str(data["poses"]),
                normals=data.get("normals"),
            )

    def rgba_uint8(self) -> np.ndarray:
        """The views as 8-bit RGBA, (N, H, W, 4): colours as they are, the mask as alpha."""
        return np.concatenate([to_uint8(self.images), to_uint8(self.masks)[..., None]], axis=-1)


# ---------------------------------------------------------------------------------------------------- grids


def split_grid(grid: Image.Image | np.ndarray) -> list[Image.Image] | np.ndarray:
    """The six views of a Zero123++ grid (3 rows x 2 columns of square views), row-major: a PIL grid as six PIL
    images (RGB or RGBA), an array (H, W, ...) as one array (6, S, S, ...) of the same dtype.

    Any grid of square tiles works (640x960 as the model makes it, or a resized copy such as 1280x1920); anything
    else raises :class:`InputError` saying what the size should be. The one splitter of the project: the Zero123++
    pipeline hands on whole grids.
    """
    height, width = (grid.height, grid.width) if isinstance(grid, Image.Image) else grid.shape[:2]
    side = width // GRID_COLS
    if width % GRID_COLS or height % GRID_ROWS or height // GRID_ROWS != side or side == 0:
        raise InputError(
            f"The views image is {width}x{height} pixels, but a Zero123++ grid is {GRID_COLS * VIEW_SIZE}x"
            f"{GRID_ROWS * VIEW_SIZE} (3 rows x 2 columns of square views); pass the views.png the model wrote."
        )
    if not isinstance(grid, Image.Image):
        tiles = grid.reshape(GRID_ROWS, side, GRID_COLS, side, *grid.shape[2:]).swapaxes(1, 2)
        return tiles.reshape(GRID_ROWS * GRID_COLS, side, side, *grid.shape[2:])
    if grid.mode not in ("RGB", "RGBA"):
        grid = grid.convert("RGBA" if "A" in grid.getbands() else "RGB")
    return [
        grid.crop((c * side, r * side, (c + 1) * side, (r + 1) * side))
        for r in range(GRID_ROWS)
        for c in range(GRID_COLS)
    ]


def join_grid(tiles: np.ndarray) -> np.ndarray:
    """Six square views (6, S, S, ...) as one Zero123++ grid (3 S, 2 S, ...), row-major: the inverse of
    :func:`split_grid` on arrays."""
    count, side = tiles.shape[:2]
    if count != GRID_ROWS * GRID_COLS:
        raise ValueError(f"a grid holds {GRID_ROWS * GRID_COLS} views, got {count}")
    rows = tiles.reshape(GRID_ROWS, GRID_COLS, side, side, *tiles.shape[3:]).swapaxes(1, 2)
    return rows.reshape(GRID_ROWS * side, GRID_COLS * side, *tiles.shape[3:])


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8-bit, rounding to nearest, so that ``k / 255`` comes back as ``k``."""
    return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def _stack(views: list[Image.Image]) -> np.ndarray:
    """Six PIL views as float32 (6, S, S, 3 or 4): RGBA if any view has alpha."""
    mode = "RGBA" if any("A" in v.getbands() for v in views) else "RGB"
    return np.stack([np.asarray(v.convert(mode), dtype=np.float32) / 255 for v in views])


def _unit_normals(normal_maps: np.ndarray) -> np.ndarray:
    """Normal-map colours in [0, 1] to unit vectors; zero where the map is the 0.5 gray of the background."""
    vectors = normal_maps * 2 - 1
    length = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.where(length > 0.2, vectors / np.maximum(length, 1e-6), 0.0).astype(np.float32)


def open_image(path: Path) -> Image.Image:
    """The image file at ``path``, read whole; a file that is no image is an :class:`InputError` naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InputError(f"Cannot read {path} as an image; pass a PNG, JPEG or WebP file.") from None


def _as_image(grid: Image.Image | np.ndarray) -> Image.Image:
    """A grid as a PIL image: arrays of floats in [0, 1] or of 8-bit values."""
    if isinstance(grid, Image.Image):
        return grid
    array = np.asarray(grid)
    return Image.fromarray(to_uint8(array) if array.dtype.kind == "f" else array.astype(np.uint8))


def _natural_key(path: Path) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
