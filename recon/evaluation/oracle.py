"""Oracle views: a real mesh rendered exactly where and how Zero123++ would show it, as if the diffusion were perfect.

The real Zero123++ weights cannot be used on the build machines, but its output can be imitated: render a ground-truth
mesh at the six fixed poses of :mod:`recon.cameras` into the grid of 3 rows x 2 columns of 320-px views (640 wide x 960
tall) on a gray (127) background, and hand the reconstruction the exact alpha as masks. Reconstruction quality is then
measured against the mesh itself.

Loading, normalisation and the grid layout are those of :mod:`recon.mesh_grids` (shared with ``img2mesh train-data``);
``OBJ_UP_AXIS`` adds, per test mesh, which axis of an OBJ file is up (+Y unless listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recon.cameras import DEFAULT_RADIUS, VIEW_SIZE, zero123pp_cameras
from recon.mesh_grids import GRAY, NORMALISED_RADIUS, UpAxis, load_normalised_mesh, normalise, render_grid, render_photo
from recon.posed_views import PosedViews, to_uint8
from recon.render import Fragments, Lighting, RenderMesh, facing_normals, prepare_mesh, rasterize

__all__ = ["GRAY", "NORMALISED_RADIUS", "OBJ_UP_AXIS", "OracleViews", "load_mesh", "normalise", "oracle_views"]

#: Up axis of OBJ files that are not +Y up (file name -> axis of the file that points up).
OBJ_UP_AXIS: dict[str, UpAxis] = {"ycb_banana.obj": "z"}


@dataclass
class OracleViews:
    """Zero123++-like output rendered from a ground-truth mesh."""

    grid: object
    """PIL RGB image, 640 wide x 960 tall: the six views, 3 rows x 2 columns, over gray 127, as Zero123++ returns it."""
    input_photo: object
    """PIL RGBA image: the view at azimuth 0 (the "photo" Zero123++ is conditioned on), straight alpha."""
    views: PosedViews
    """The six views (RGB = the grid tiles, masks = the exact rendered alpha) with their cameras."""


def load_mesh(path: str | Path, up: UpAxis | None = None):
    """:func:`recon.mesh_grids.load_normalised_mesh` with the up axis of the test meshes (``OBJ_UP_AXIS``) unless
    ``up`` is given."""
    return load_normalised_mesh(path, up or OBJ_UP_AXIS.get(Path(path).name))


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

    prepared = prepare_mesh(mesh, device)
    grid, tiles = render_grid(
        prepared,
        version,
        0.0,
        lighting=lighting,
        radius=radius,
        supersample=supersample,
        device=device,
    )
    k, c2w = zero123pp_cameras(version, radius)
    views = PosedViews(
        images=to_uint8(tiles.rgb).astype(np.float32) / 255.0,
        masks=tiles.alpha.astype(np.float32),
        intrinsics=k,
        cam_to_world=c2w,
        poses=version,
        normals=normal_maps(prepared, k, c2w, VIEW_SIZE, supersample) if normals else None,
    )
    photo = render_photo(prepared, [0.0], [photo_elevation], photo_size, version, lighting, radius, supersample, device)
    return OracleViews(grid=Image.fromarray(grid), input_photo=Image.fromarray(photo[0], "RGBA"), views=views)


def normal_maps(mesh: RenderMesh, intrinsics, cam_to_world, size: int, supersample: int = 2) -> np.ndarray:
    """The mesh's exact unit normal maps in each camera's frame, (B, size, size, 3) float32, 0 where no face is
    seen: the renormalised mean over covered subsamples, a stand-in for the normal ControlNet's maps."""
    k = np.array(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    k[:, :2] *= supersample  # as recon.render.render_views supersamples
    c2w = np.asarray(cam_to_world, dtype=np.float64).reshape(-1, 4, 4)
    fragments = rasterize(mesh, k, c2w, size * supersample, size * supersample)
    normals = camera_normals(mesh, fragments, torch.as_tensor(c2w, dtype=torch.float32, device=mesh.device))
    if supersample > 1:
        pooled = F.avg_pool2d(normals.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        normals = F.normalize(pooled, dim=-1, eps=1e-6)
    return normals.cpu().numpy()


def camera_normals(mesh: RenderMesh, fragments: Fragments, cam_to_world: torch.Tensor) -> torch.Tensor:
    """Unit normals (B, H, W, 3) of rasterised fragments in each camera's frame (recon.cameras: OpenGL), turned
    towards the camera like the shading normals (faces are two-sided); 0 where not covered. ``cam_to_world`` (B, 4, 4).
    """
    b, h, w = fragments.face_id.shape
    normals = torch.zeros(b * h * w, 3, device=mesh.device)
    covered = torch.nonzero(fragments.face_id.reshape(-1) >= 0).squeeze(1)
    if covered.numel():
        world = facing_normals(mesh, fragments, covered)
        # camera coordinates are the components along the camera's axes, the columns of its rotation
        rotation = cam_to_world[covered // (h * w), :3, :3]
        normals[covered] = torch.einsum("ni,nij->nj", world, rotation)
    return normals.view(b, h, w, 3)
