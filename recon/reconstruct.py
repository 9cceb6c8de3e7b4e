"""Posed views → signed-distance and colour fields → textured mesh: the reconstruction entry point.

Two halves, so that a batch runner can keep the GPU busy on the next object while the CPU finishes this one:

- :func:`recon.fit.fit_fields` (GPU-bound): the fields fitted to the views (:mod:`recon.fit`).
- :func:`finish_mesh` (CPU-friendly): marching cubes, clean-up and decimation (:mod:`recon.meshing`), then UV unwrap
  and a texture baked from the views, with the colour field filling what no view sees (:mod:`recon.texture`).

Everything is seeded, so the same views and config give the same mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from recon.config import ReconConfig
from recon.fit import Fields, fit_fields
from recon.meshing import MeshConfig, simplify, smoothed_surface
from recon.posed_views import PosedViews
from recon.texture import TextureConfig, bake_texture
from recon.view_refinement import corrected_views


@dataclass
class ReconResult:
    """A reconstructed, textured mesh and where the time went."""

    mesh: trimesh.Trimesh
    """World z-up, UV-textured (PBR base colour)."""
    timings: dict[str, float]
    """Seconds per stage."""


def fitted_surface(fields: Fields, mesh: MeshConfig | None = None) -> trimesh.Trimesh:
    """The fitted SDF's zero level set, cleaned and smoothed as ``mesh`` says but not decimated: the first step of
    :func:`finish_mesh`, for callers that make several meshes of one fit (levels of detail, a normal map's source)."""
    grid = fields.grid
    sdf_xyz = grid.sdf.detach()[0, 0].permute(2, 1, 0).numpy()
    return smoothed_surface(sdf_xyz, grid.box.lo.numpy(), grid.box.hi.numpy(), mesh or MeshConfig())


def finish_mesh(
    fields: Fields,
    views: PosedViews,
    mesh: MeshConfig | None = None,
    texture: TextureConfig | None = None,
    timings: dict[str, float] | None = None,
    device: str | torch.device = "cpu",
    surface: trimesh.Trimesh | None = None,
) -> trimesh.Trimesh:
    """Mesh, clean, decimate, unwrap and texture the fitted fields (the CPU half of :func:`reconstruct`).

    ``device`` runs the texel rasterisation and view projection (CPU by default, so a batch runner can overlap it
    with the next object's fitting; on a single job the fitting device is faster). ``surface``: the fields'
    :func:`fitted_surface` when the caller has it already (made with the same ``mesh`` smoothing). Stage seconds go
    into ``timings``.
    """
    mesh = mesh or MeshConfig()
    texture = texture or TextureConfig()
    timings = {} if timings is None else timings
    start = time.perf_counter()
    grid = fields.grid
    decimated = simplify(fitted_surface(fields, mesh) if surface is None else surface, mesh.faces)
    timings["mesh"] = time.perf_counter() - start

    def colour_field(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return grid.rgb(torch.as_tensor(points, dtype=torch.float32)).numpy()

    seen = corrected_views(views, fields.cam_to_world, fields.colour_transforms, fields.view_warps)
    textured = bake_texture(decimated, seen, colour_field, texture, device=device, timings=timings)
    return textured


def reconstruct(
    views: PosedViews,
    recon: ReconConfig | None = None,
    mesh: MeshConfig | None = None,
    texture: TextureConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    seed: int = 0,
) -> ReconResult:
    """Six posed views → UV-textured triangle mesh in world z-up coordinates (deterministic for a given ``seed``)."""
    fields = fit_fields(views, recon, device=device, progress=progress, seed=seed)
    timings = dict(fields.timings)
    start = time.perf_counter()
    result = finish_mesh(fields, views, mesh, texture, timings=timings, device=fields.device)
    timings["finish"] = time.perf_counter() - start
    timings["total"] = timings["fit"] + timings["finish"]
    return ReconResult(result, timings)
