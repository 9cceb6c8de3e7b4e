"""Cameras of img2mesh, and the one place where its coordinate conventions are stated.

Conventions (convert only at the boundaries, with the helpers below):

- **World**: right-handed, **z-up**, the object at the origin inside roughly [-1, 1]^3. The input photo is the view
  at azimuth 0, i.e. its camera sits on the +X axis looking towards -X.
- **Orbit cameras**: a camera at azimuth ``az`` and elevation ``el`` (degrees) on a sphere of radius ``r`` sits at
  ``r * (cos el * cos az, cos el * sin az, sin el)`` and looks at the origin with world +Z as "up". Azimuth grows
  counter-clockwise seen from +Z.
- **Camera-to-world matrices** are 4x4, **OpenGL** convention: camera +X right, +Y up, looking down -Z. That is what
  nerfstudio and instant-ngp read, and what Zero123++'s public reconstruction models (InstantMesh) use.
- **Pixels**: ``u`` to the right, ``v`` down, continuous coordinates in which pixel ``(i, j)`` covers
  ``[i, i + 1) x [j, j + 1)`` (its centre is ``i + 0.5``); the principal point of a ``W x H`` view is
  ``(W / 2, H / 2)``. Intrinsics ``K`` are in pixels: ``u = cx + fx * x_c / -z_c``, ``v = cy - fy * y_c / -z_c``.
- **Zero123++ views**: six 320x320 tiles in 3 rows x 2 columns (the grid is 640 wide x 960 tall), numbered row-major.
  Azimuths are 30, 90, 150, 210, 270, 330 degrees relative to the input view; elevations are absolute: v1.2 +20/-10
  alternating with a 30 degree field of view, v1.1 +30/-20 with 49.134 degrees (2 * atan(16 / 35)). The camera distance
  is free (scale ambiguity); 4.0 with the object inside [-1, 1]^3 is the convention of the public models built on v1.2.
- **Exported meshes** (GLB/OBJ/PLY) use the glTF convention, +Y up: world ``(x, y, z)`` becomes glTF
  ``(y, z, x)``, so the side seen in the input photo (world +X) faces glTF +Z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from recon.config import DEFAULT_RADIUS

PoseVersion = Literal["v1.2", "v1.1"]


#: Grid layout of a Zero123++ output image: rows, columns, side of one view in pixels.
GRID_ROWS, GRID_COLS, VIEW_SIZE = 3, 2, 320


@dataclass(frozen=True)
class PoseSet:
    """The fixed output cameras of one Zero123++ version."""

    azimuths: tuple[float, ...]
    """Azimuth of each view in degrees, relative to the input view, in grid (row-major) order."""
    elevations: tuple[float, ...]
    """Absolute elevation of each view in degrees."""
    fov: float
    """Field of view of every view in degrees (square views, so horizontal = vertical)."""


ZERO123PP_POSES: dict[str, PoseSet] = {
    "v1.2": PoseSet((30, 90, 150, 210, 270, 330), (20, -10, 20, -10, 20, -10), 30.0),
    "v1.1": PoseSet((30, 90, 150, 210, 270, 330), (30, -20, 30, -20, 30, -20), math.degrees(2 * math.atan(16 / 35))),
}


def pose_set(version: str) -> PoseSet:
    """The pose table of a Zero123++ version ("v1.2" or "v1.1")."""
    try:
        return ZERO123PP_POSES[version]
    except KeyError:
        raise ValueError(f"Unknown Zero123++ pose version {version!r}; use one of {sorted(ZERO123PP_POSES)}.") from None


def camera_position(azimuth: float, elevation: float, radius: float = DEFAULT_RADIUS) -> np.ndarray:
    """World position of an orbit camera (degrees in, z-up world)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def look_at(position: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """OpenGL camera-to-world matrix of a camera at ``position`` looking at ``target`` (default: the origin)."""
    position = np.asarray(position, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    z = position - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:  # looking straight up or down: any horizontal x will do
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, position
    return c2w


def orbit_cam_to_world(azimuths, elevations, radius: float = DEFAULT_RADIUS) -> np.ndarray:
    """Camera-to-world matrices ``(N, 4, 4)`` of orbit cameras looking at the origin."""
    return np.stack([look_at(camera_position(a, e, radius)) for a, e in zip(azimuths, elevations, strict=True)])


def intrinsics(fov: float, width: int, height: int | None = None) -> np.ndarray:
    """Pinhole intrinsics in pixels for a horizontal field of view ``fov`` (degrees), square pixels."""
    height = width if height is None else height
    f = (width / 2) / math.tan(math.radians(fov) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def zero123pp_cameras(
    version: str = "v1.2", radius: float = DEFAULT_RADIUS, image_size: int = VIEW_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics ``(6, 3, 3)`` and camera-to-world matrices ``(6, 4, 4)`` of the six Zero123++ views."""
    poses = pose_set(version)
    c2w = orbit_cam_to_world(poses.azimuths, poses.elevations, radius)
    k = np.repeat(intrinsics(poses.fov, image_size)[None], len(poses.azimuths), axis=0)
    return k, c2w


def project_points(points: torch.Tensor, k, cam_to_world) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(..., N, 2)`` and depths along the viewing axis ``(..., N)`` of world points ``(N, 3)``.

    The one pinhole projection of img2mesh (the fit, the hull, the rasteriser and the baking all use it). ``k``
    ``(..., 3, 3)`` and ``cam_to_world`` ``(..., 4, 4)`` (tensors or arrays, taken to the points' device and dtype)
    may carry batch dimensions: one projection per camera. Depths are clamped to 1e-6 in the division, so a point
    behind the camera lands far outside the frame rather than mirrored into it.
    """
    k = torch.as_tensor(np.asarray(k) if not torch.is_tensor(k) else k, dtype=points.dtype, device=points.device)
    c2w = torch.as_tensor(
        np.asarray(cam_to_world) if not torch.is_tensor(cam_to_world) else cam_to_world,
        dtype=points.dtype,
        device=points.device,
    )
    cam = (points - c2w[..., None, :3, 3]) @ c2w[..., :3, :3]
    depth = -cam[..., 2]
    safe = depth.clamp_min(1e-6)
    u = k[..., None, 0, 2] + k[..., None, 0, 0] * cam[..., 0] / safe
    v = k[..., None, 1, 2] - k[..., None, 1, 1] * cam[..., 1] / safe
    return torch.stack([u, v], dim=-1), depth


def project(points: np.ndarray, k: np.ndarray, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`project_points` for numpy arrays (float64): pixel coordinates ``(N, 2)`` and depths ``(N,)``."""
    uv, depth = project_points(torch.as_tensor(np.asarray(points, dtype=np.float64)), k, cam_to_world)
    return uv.numpy(), depth.numpy()


def sample_image(image: torch.Tensor, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values ``(N, C)`` of a ``(C, H, W)`` image at pixel coordinates ``(N, 2)`` (the convention above); zero
    outside the frame."""
    _, h, w = image.shape
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], dim=-1).reshape(1, -1, 1, 2)
    values = F.grid_sample(image[None], grid, mode=mode, padding_mode="zeros", align_corners=False)
    return values.reshape(image.shape[0], -1).T


#: Rotation taking img2mesh world coordinates (z-up) to glTF coordinates (+Y up): (x, y, z) -> (y, z, x).
WORLD_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def world_to_gltf(points: np.ndarray) -> np.ndarray:
    """World (z-up) points or directions ``(N, 3)`` to glTF (+Y up) coordinates."""
    return np.asarray(points) @ WORLD_TO_GLTF.T


def gltf_to_world(points: np.ndarray) -> np.ndarray:
    """glTF (+Y up) points or directions ``(N, 3)`` to world (z-up) coordinates."""
    return np.asarray(points) @ WORLD_TO_GLTF
