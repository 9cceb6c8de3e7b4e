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
import trimesh
from PIL import Image

from recon.errors import InputError
from recon.normal_map import fine_normals, texel_frames
from recon.sdf_grid import SdfGrid, shade
from recon.texture import fill_outside


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
