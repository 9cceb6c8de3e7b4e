"""Albedo texture: the baked view colours with the fit's learnt shading divided out, for assets an engine will light.

The views show the object under some light, and the texture projected from them keeps it: a game engine lighting
that texture again darkens the undersides twice. The fit explains the views' colour as albedo times one learnt
Lambertian light (:func:`recon.sdf_grid.shade`), so dividing each texel by that shading, evaluated with the field's
normal at the texel's point on the fitted surface, leaves the albedo at the texture's full detail (the fit's own
colour grid holds the same albedo, but far blurrier).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from recon.errors import InputError
from recon.normal_map import texel_frames
from recon.sdf_grid import SdfGrid, sample_grid, sdf_gradient, shade
from recon.texture import fill_outside

#: Steps that move a texel's point onto the SDF's zero level set (each one ``p -= f(p) ∇f``, exact for a true
#: distance; two more than needed for points a voxel or two away, as a decimated mesh's are).
PROJECTION_STEPS = 4
#: A texel whose point ends farther than this many voxels from the zero level set (the coarse mesh bridges a gap the
#: field has) keeps the coarse normal: the field's surface there is not the one the texel shows.
MAX_OFFSET_VOXELS = 6.0


def fine_normals(grid: SdfGrid, points: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Unit normals (N, 3) of the field's zero level set near ``points`` (N, 3); ``coarse`` (N, 3) where there is no
    surface close by (:data:`MAX_OFFSET_VOXELS`) or where the nearest surface faces the other way."""
    device = points.device
    sdf = grid.sdf.detach().to(device)
    box = grid.box.to(device)
    gradient = sdf_gradient(sdf, grid.voxel)
    p = points
    for _ in range(PROJECTION_STEPS):
        direction = F.normalize(sample_grid(gradient, box, p), dim=-1, eps=1e-8)
        p = p - sample_grid(sdf, box, p) * direction
    normal = F.normalize(sample_grid(gradient, box, p), dim=-1, eps=1e-8)
    coarse = F.normalize(coarse, dim=-1, eps=1e-8)
    near = sample_grid(sdf, box, p)[:, 0].abs() < grid.voxel
    near &= (p - points).norm(dim=-1) < MAX_OFFSET_VOXELS * grid.voxel
    usable = near & ((normal * coarse).sum(-1) > 0)
    return torch.where(usable[:, None], normal, coarse)


def remove_shading(mesh: trimesh.Trimesh, grid: SdfGrid, device: str | torch.device = "cpu") -> trimesh.Trimesh:
    """A copy of the UV-textured ``mesh`` whose base colour texture is divided by ``grid``'s learnt shading."""
    if grid.light is None:
        raise InputError(
            "export.colour albedo needs a fit with a learnt light (recon.shading: lambertian); "
            "set recon.shading to lambertian or export.colour to views."
        )
    device = torch.device(device)
    material = mesh.visual.material
    texture = np.asarray(material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255
    size = texture.shape[0]
    covered, points, normal, _, _ = texel_frames(mesh, size, device)
    shading = shade(fine_normals(grid, points, normal), grid.light.detach().to(device))
    colour = torch.as_tensor(texture, device=device)
    colour[covered] = (colour[covered] / shading[:, None].clamp_min(1e-3)).clamp(0, 1)
    albedo = fill_outside(colour.cpu().numpy(), covered.cpu().numpy())
    out = mesh.copy()
    out.visual.material = material.copy()
    out.visual.material.baseColorTexture = Image.fromarray((albedo * 255 + 0.5).astype(np.uint8))
    return out
