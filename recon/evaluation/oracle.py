"""Oracle views: a real mesh rendered exactly where and how Zero123++ would show it, as if the diffusion were perfect.

The real Zero123++ weights cannot be used on the build machines, but its output can be imitated: render a ground-truth
mesh at the six fixed poses of :mod:`recon.cameras` into the 960x640, 3x2 grid on a gray (127) background, and hand
the reconstruction the exact alpha as masks. Reconstruction quality is then measured against the mesh itself.

Normalisation (what Zero123++ v1.2 calls "a normalised object size"): the mesh is centred on its bounding-box centre
and scaled so that its farthest vertex lies at ``NORMALISED_RADIUS`` = 0.9 from the origin. A sphere of that radius
seen from distance 4 with a 30 degree field of view spans tan(asin(0.9 / 4)) / tan(15 deg) = 0.86 of the view, so
the object is never cut off in any view, fills about 0.85 of the tile along its longest direction, and lies inside
[-1, 1]^3 as the public reconstruction models built on v1.2 assume.

Axes: glTF files are +Y up by specification and are turned to the world z-up frame with
:func:`recon.cameras.gltf_to_world`, so the glTF front (+Z) faces the input photo (world +X). OBJ has no convention;
``OBJ_UP_AXIS`` records, per test mesh, which axis is up (+Y unless listed); the same front rule applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from recon.cameras import (
    DEFAULT_RADIUS,
    GRID_COLS,
    GRID_ROWS,
    VIEW_SIZE,
    WORLD_TO_GLTF,
    camera_position,
    intrinsics,
    look_at,
    pose_set,
    zero123pp_cameras,
)
from recon.errors import InputError
from recon.posed_views import BACKGROUND_GRAY, PosedViews
from recon.render import Lighting, render_views, world_parts

#: Distance of the farthest vertex from the origin after normalisation (see the module docstring).
NORMALISED_RADIUS = 0.9
#: Background of Zero123++ output grids (and of the condition image), in [0, 1].
GRAY = BACKGROUND_GRAY / 255
#: Up axis of OBJ files that are not +Y up (file name -> axis of the file that points up).
OBJ_UP_AXIS: dict[str, Literal["y", "z"]] = {"ycb_banana.obj": "z"}

_Z_UP_FROM = {
    "y": WORLD_TO_GLTF.T,  # (x, y, z) with +Y up -> world, exactly recon.cameras.gltf_to_world
    "z": np.eye(3),
}


@dataclass
class OracleViews:
    """Zero123++-like output rendered from a ground-truth mesh."""

    grid: object
    """PIL RGB image, 640 wide x 960 high: the six views in a 3x2 grid over gray 127, as Zero123++ returns it."""
    input_photo: object
    """PIL RGBA image: the view at azimuth 0 (the "photo" Zero123++ is conditioned on), straight alpha."""
    views: PosedViews
    """The six views (RGB = the grid tiles, masks = the exact rendered alpha) with their cameras."""


def load_mesh(path: str | Path, up: Literal["y", "z"] | None = None):
    """Load a mesh file with its materials as a trimesh Scene in world z-up, centred and normalised (module doc).

    ``up`` overrides the up axis of the file (default: +Y for glTF, ``OBJ_UP_AXIS`` or +Y for other formats).
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Mesh file {path} does not exist; pass the path of an OBJ, GLB, glTF or PLY file.")
    try:
        scene = trimesh.load(path, force="scene", process=False)
    except Exception as error:  # trimesh raises many types for unreadable files
        raise InputError(
            f"Could not read mesh {path.name} ({error}); pass a valid OBJ, GLB, glTF or PLY file."
        ) from error
    if not world_parts(scene):
        raise InputError(f"Mesh file {path.name} contains no triangles; pass a file with a triangle mesh.")
    if up is None:
        up = "y" if path.suffix.lower() in (".glb", ".gltf") else OBJ_UP_AXIS.get(path.name, "y")
    rotation = np.eye(4)
    rotation[:3, :3] = _Z_UP_FROM[up]
    scene.apply_transform(rotation)
    return normalise(scene)


def normalise(scene):
    """Centre a Scene on its bounding-box centre and scale its farthest vertex to ``NORMALISED_RADIUS``."""
    from recon.render import world_geometry

    vertices = world_geometry(scene).vertices
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = np.linalg.norm(vertices - centre, axis=1).max()
    transform = np.eye(4)
    transform[:3, :3] *= NORMALISED_RADIUS / radius
    transform[:3, 3] = -centre * NORMALISED_RADIUS / radius
    scene.apply_transform(transform)
    return scene


def oracle_views(
    mesh,
    version: str = "v1.2",
    lighting: Lighting = "lit",
    radius: float = DEFAULT_RADIUS,
    photo_elevation: float = 5.0,
    photo_size: int = 512,
    supersample: int = 2,
    device: str = "cpu",
    normals: bool = False,
) -> OracleViews:
    """Render a (normalised, world z-up) mesh into a Zero123++ grid, an input photo and PosedViews with exact alpha.

    The input photo uses the same field of view and distance as the views, at azimuth 0 and ``photo_elevation``.
    ``normals`` also gives the views the mesh's exact camera-space normal maps (:attr:`PosedViews.normals`, zero on
    the background), a stand-in for those of the normal ControlNet.
    """
    from PIL import Image

    from recon.render import prepare_mesh

    prepared = prepare_mesh(mesh, device)
    k, c2w = zero123pp_cameras(version, radius, VIEW_SIZE)
    tiles = render_views(prepared, k, c2w, VIEW_SIZE, VIEW_SIZE, lighting, GRAY, supersample, device, normals)
    tiles_u8 = np.stack([_to_uint8(tile) for tile in tiles.rgb])
    grid = np.zeros((GRID_ROWS * VIEW_SIZE, GRID_COLS * VIEW_SIZE, 3), np.uint8)
    for index, tile in enumerate(tiles_u8):
        row, col = divmod(index, GRID_COLS)
        grid[row * VIEW_SIZE : (row + 1) * VIEW_SIZE, col * VIEW_SIZE : (col + 1) * VIEW_SIZE] = tile
    views = PosedViews(
        images=tiles_u8.astype(np.float32) / 255.0,
        masks=tiles.alpha.astype(np.float32),
        intrinsics=k,
        cam_to_world=c2w,
        poses=version,
        normals=tiles.normals,
    )

    photo_k = intrinsics(pose_set(version).fov, photo_size)
    photo_c2w = look_at(camera_position(0.0, photo_elevation, radius))
    photo = render_views(
        prepared, photo_k[None], photo_c2w[None], photo_size, photo_size, lighting, 0.0, supersample, device
    )
    alpha = photo.alpha[0]
    straight = np.where(alpha[..., None] > 0, photo.rgb[0] / np.maximum(alpha[..., None], 1e-6), 0.0)
    rgba = np.concatenate([straight, alpha[..., None]], axis=-1)
    return OracleViews(grid=Image.fromarray(grid), input_photo=Image.fromarray(_to_uint8(rgba), "RGBA"), views=views)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
