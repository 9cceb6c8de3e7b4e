"""Fitted fields → the meshes of a game asset: its levels of detail, each meshed, unwrapped and textured on its own.

Every level comes from the same fit (one smoothed marching-cubes surface, made once and decimated to each face
budget), with its own UV atlas and texture, so each is a closed 2-manifold that stands alone, as
:func:`recon.reconstruct.finish_mesh` makes them.
A coarser level is seen from farther away, so its texture side shrinks with the square root of its face count
(roughly constant texels per face), rounded to a power of two. Then the material: the fit's learnt shading divided
out of the base colour (:mod:`recon.albedo`) and a normal map (:mod:`recon.normal_map`) baked from the same surface
decimated to ``export.normal_map_faces`` (the default preset's 20k faces), where the export config asks for them.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import trimesh

from recon.albedo import remove_shading
from recon.config import ExportConfig, MeshConfig, TextureConfig
from recon.fit import Fields
from recon.meshing import decimate
from recon.normal_map import bake_normal_map
from recon.posed_views import PosedViews
from recon.reconstruct import finish_mesh, fitted_surface

#: Smallest texture side of a coarse level of detail.
MIN_LEVEL_TEXTURE = 128


def finish_asset(
    fields: Fields,
    views: PosedViews,
    mesh: MeshConfig | None = None,
    texture: TextureConfig | None = None,
    export: ExportConfig | None = None,
    device: str | torch.device = "cpu",
    timings: dict[str, float] | None = None,
) -> list[trimesh.Trimesh]:
    """The asset's meshes (world z-up, UV-textured), finest first: one of ``mesh.faces`` faces, or one per
    ``export.lods`` entry. Seconds per step go into ``timings`` (summed over levels)."""
    mesh = mesh or MeshConfig()
    texture = texture or TextureConfig()
    export = export or ExportConfig()
    export.validate()
    timings = {} if timings is None else timings
    levels = export.lods or (mesh.faces,)
    start = time.perf_counter()
    surface = fitted_surface(fields, mesh)
    shared = {"mesh": time.perf_counter() - start}
    detail = None
    if export.normal_map:
        start = time.perf_counter()
        detail = normal_map_source(surface, export)
        shared["normal_map"] = time.perf_counter() - start
    meshes = []
    for faces in levels:
        side = level_texture_size(texture.size, faces, levels[0])
        steps: dict[str, float] = {}
        level = finish_mesh(
            fields,
            views,
            dataclasses.replace(mesh, faces=faces),
            dataclasses.replace(texture, size=side),
            timings=steps,
            device=device,
            surface=surface,
        )
        if export.colour == "albedo":
            start = time.perf_counter()
            level = remove_shading(level, fields.grid, device)
            steps["albedo"] = time.perf_counter() - start
        if detail is not None:
            level = bake_normal_map(level, detail, device=device, timings=steps)
        for step, seconds in steps.items():
            timings[step] = timings.get(step, 0.0) + seconds
        meshes.append(level)
    for step, seconds in shared.items():
        timings[step] = timings.get(step, 0.0) + seconds
    return meshes


def normal_map_source(surface: trimesh.Trimesh, export: ExportConfig) -> trimesh.Trimesh:
    """The high-poly mesh a normal map is baked from: the fields' :func:`recon.reconstruct.fitted_surface` decimated
    to ``export.normal_map_faces``. Only its shading normals are read, so the manifold repair of an exported mesh is
    left out (its few flattened fins cancel in the area-weighted vertex normals)."""
    return decimate(surface, export.normal_map_faces)


def level_texture_size(size: int, faces: int, finest: int) -> int:
    """Texture side of a level of ``faces`` faces when the finest level of ``finest`` faces gets ``size``: scaled by
    √(faces / finest), rounded to the nearest power of two, at least :data:`MIN_LEVEL_TEXTURE` (or ``size``)."""
    if faces >= finest:
        return size
    scaled = size * math.sqrt(faces / finest)
    return min(size, max(MIN_LEVEL_TEXTURE, 1 << round(math.log2(scaled))))
