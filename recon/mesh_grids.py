"""Mesh files as Zero123++ sees objects: loaded into the world frame and normalised, rendered as its 3x2 grid.

Two users share this: the evaluation's oracle views (a ground-truth mesh rendered as if the diffusion were perfect)
and ``img2mesh train-data`` (condition images and target grids to fine-tune the diffusion model on). Both must
frame objects exactly as the model's output does, so the conventions live here once.

Normalisation (what Zero123++ v1.2 calls "a normalised object size"): the mesh is centred on its bounding-box centre
and scaled so that its farthest vertex lies at ``NORMALISED_RADIUS`` = 0.9 from the origin. A sphere of that radius
seen from distance 4 with a 30 degree field of view spans tan(asin(0.9 / 4)) / tan(15 deg) = 0.86 of the view, so
the object is never cut off in any view, fills about 0.85 of the tile along its longest direction, and lies inside
[-1, 1]^3 as the public reconstruction models built on v1.2 assume.

Axes: glTF files are +Y up by specification and are turned to the world z-up frame with
:func:`recon.cameras.gltf_to_world`, so the glTF front (+Z) faces the input photo (world +X). OBJ and PLY have no
convention; the caller says which axis is up (+Y unless told), and the same front rule applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from recon.cameras import (
    DEFAULT_RADIUS,
    VIEW_SIZE,
    WORLD_TO_GLTF,
    camera_position,
    intrinsics,
    look_at,
    orbit_cam_to_world,
    pose_set,
)
from recon.errors import InputError
from recon.posed_views import BACKGROUND_GRAY, join_grid, to_uint8
from recon.render import Lighting, Render, render_views, world_geometry, world_parts

#: Distance of the farthest vertex from the origin after normalisation (see the module docstring).
NORMALISED_RADIUS = 0.9
#: Background of Zero123++ output grids (and of the condition image), in [0, 1].
GRAY = BACKGROUND_GRAY / 255
#: File suffixes :func:`load_normalised_mesh` reads.
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")

UpAxis = Literal["y", "z"]

_Z_UP_FROM = {
    "y": WORLD_TO_GLTF.T,  # (x, y, z) with +Y up -> world, exactly recon.cameras.gltf_to_world
    "z": np.eye(3),
}


def load_normalised_mesh(path: str | Path, up: UpAxis | None = None):
    """Load a mesh file with its materials as a trimesh Scene in world z-up, centred and normalised (module doc).

    ``up`` is the up axis of an OBJ or PLY file (default +Y); glTF is always +Y up.
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
    if path.suffix.lower() in (".glb", ".gltf") or up is None:
        up = "y"
    rotation = np.eye(4)
    rotation[:3, :3] = _Z_UP_FROM[up]
    scene.apply_transform(rotation)
    return normalise(scene)


def normalise(scene):
    """Centre a Scene on its bounding-box centre and scale its farthest vertex to ``NORMALISED_RADIUS``."""
    vertices = world_geometry(scene).vertices
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = np.linalg.norm(vertices - centre, axis=1).max()
    if not np.isfinite(radius) or radius == 0:
        raise InputError("The mesh has no extent (all its vertices coincide or are not finite); check the file.")
    transform = np.eye(4)
    transform[:3, :3] *= NORMALISED_RADIUS / radius
    transform[:3, 3] = -centre * NORMALISED_RADIUS / radius
    scene.apply_transform(transform)
    return scene


def render_grid(
    mesh,
    version: str = "v1.2",
    azimuth: float = 0.0,
    view_size: int = VIEW_SIZE,
    lighting: Lighting = "lit",
    radius: float = DEFAULT_RADIUS,
    supersample: int = 2,
    device: str = "cpu",
) -> tuple[np.ndarray, Render]:
    """The six views of a (normalised, world z-up) mesh at the poses of ``version`` relative to an input seen from
    ``azimuth``, laid out as Zero123++'s output: (3 · view_size, 2 · view_size, 3) uint8 over gray 127, row-major.

    Also returns the six renders (colour over gray, exact alpha, depth).
    """
    poses = pose_set(version)
    c2w = orbit_cam_to_world([azimuth + a for a in poses.azimuths], poses.elevations, radius)
    k = np.repeat(intrinsics(poses.fov, view_size)[None], len(poses.azimuths), axis=0)
    tiles = render_views(mesh, k, c2w, view_size, view_size, lighting, GRAY, supersample, device)
    tiles_u8 = to_uint8(tiles.rgb)
    return join_grid(tiles_u8), tiles


def render_photo(
    mesh,
    azimuths,
    elevations,
    size: int = 512,
    version: str = "v1.2",
    lighting: Lighting = "lit",
    radius: float = DEFAULT_RADIUS,
    supersample: int = 2,
    device: str = "cpu",
) -> np.ndarray:
    """Cut-out photos of a mesh, (N, size, size, 4) uint8 RGBA with straight alpha, from orbit cameras at the
    given azimuths and elevations (degrees), with the field of view and distance of ``version``'s views."""
    k = np.repeat(intrinsics(pose_set(version).fov, size)[None], len(azimuths), axis=0)
    c2w = np.stack([look_at(camera_position(a, e, radius)) for a, e in zip(azimuths, elevations, strict=True)])
    photo = render_views(mesh, k, c2w, size, size, lighting, 0.0, supersample, device)
    alpha = photo.alpha[..., None]
    straight = np.where(alpha > 0, photo.rgb / np.maximum(alpha, 1e-6), 0.0)
    return to_uint8(np.concatenate([straight, alpha], axis=-1))
