"""Normal maps: the rasteriser's camera-space normals, the volume renderer's expected normal, and the fit's normal term.

The normal ControlNet's maps reach the reconstruction as :attr:`PosedViews.normals` (camera frame of recon.cameras);
the oracle renders the same maps from a true mesh. These tests pin that convention from both ends (the rasteriser
against an analytic sphere, the SDF renderer against an analytic ellipsoid, and the two against each other), then
check that views without normals fit exactly as before and that oracle normals make a real fit better.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from img2mesh.config import load_config
from recon.cameras import camera_position, intrinsics, look_at
from recon.config import ReconConfig
from recon.evaluation.metrics import chamfer_fscore
from recon.evaluation.oracle import load_mesh, normal_maps, oracle_views
from recon.fit import fit_fields
from recon.reconstruct import finish_mesh
from recon.render import prepare_mesh, render_views
from recon.sdf_grid import Box, SdfGrid
from recon.volume_render import clip_to_hull, pixel_rays, render_rays

CPU = load_config("cpu")
SIZE = 96
RADII = np.array([0.7, 0.5, 0.35])  # an off-centre ellipsoid: every axis and sign of the conventions shows
CENTRE = np.array([0.1, -0.05, 0.08])


@pytest.fixture(scope="module")
def ellipsoid() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=4)
    mesh.apply_transform(np.diag([*RADII, 1.0]))
    mesh.apply_translation(CENTRE)
    return mesh


@pytest.fixture(scope="module")
def rendered(ellipsoid):
    """Oracle views of the ellipsoid with normal maps, the SDF grid of the same ellipsoid, and its render."""
    views = oracle_views(ellipsoid, supersample=1, normals=True).views
    box = Box(torch.full((3,), -1.0), torch.full((3,), 1.0))
    resolution = 96
    points = box.grid_points((resolution,) * 3)
    centre, radii = torch.tensor(CENTRE, dtype=torch.float32), torch.tensor(RADII, dtype=torch.float32)
    sdf = (((points - centre) / radii).norm(dim=-1) - 1) * radii.min()  # exact zero set, distance-like near it
    grid = SdfGrid(sdf, torch.zeros(3, 4, 4, 4), box)
    voxel = 2 / (resolution - 1)
    rays = pixel_rays(views, 64, torch.device("cpu"), normals=True)
    rays = clip_to_hull(rays, (sdf < 2 * voxel).float()[None, None], box, 128, 2 * voxel)
    with torch.no_grad():
        out = render_rays(grid, rays, 64, 300.0, torch.zeros(len(rays), 3), normals=True)
    return views, rays, out


def test_rasterised_normals_are_camera_space_unit_normals_of_a_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    k, c2w = intrinsics(30.0, SIZE), look_at(camera_position(40.0, 25.0, 4.0))
    render = render_views(sphere, k[None], c2w[None], SIZE, SIZE, supersample=2)
    normals = normal_maps(prepare_mesh(sphere), k[None], c2w[None], SIZE, supersample=2)[0]
    alpha, depth = render.alpha[0], render.depth[0]
    # camera frame (OpenGL): the surface facing the camera has normal +Z, image right is +X, image up is +Y
    np.testing.assert_allclose(normals[SIZE // 2, SIZE // 2], [0, 0, 1], atol=0.02)  # half a pixel off
    assert normals[SIZE // 2, SIZE // 2 + 30, 0] > 0.5 and normals[SIZE // 2 - 30, SIZE // 2, 1] > 0.5
    covered = alpha > 0
    np.testing.assert_allclose(np.linalg.norm(normals[covered], axis=-1), 1, atol=1e-4)
    assert np.all(normals[~covered] == 0)
    # analytic: at the visible point of each pixel, the normal is (point - centre) / radius in camera space
    v, u = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    ray = np.stack([(u - SIZE / 2) / k[0, 0], -(v - SIZE / 2) / k[1, 1], -np.ones_like(u)], axis=-1)
    point = ray * depth[..., None]  # depth is along the viewing axis, where the ray's z is -1
    analytic = (point - [0, 0, -4]) / 0.8
    inner = alpha == 1
    cos = (normals[inner] * analytic[inner]).sum(-1) / np.linalg.norm(analytic[inner], axis=-1)
    assert cos.min() > 0.999


def test_expected_normal_of_an_sdf_is_the_analytic_normal(rendered):
    _, rays, out = rendered
    hit = out.opacity > 0.99
    assert hit.sum() > 1000
    point = rays.origins + out.depth[:, None] * rays.directions
    radii = torch.tensor(RADII, dtype=torch.float32)
    analytic = F.normalize((point - torch.tensor(CENTRE, dtype=torch.float32)) / radii**2, dim=-1)
    cos = (F.normalize(out.normal[hit], dim=-1) * analytic[hit]).sum(-1)
    assert cos.min() > 0.999
    # not renormalised: its length is the opacity
    torch.testing.assert_close(out.normal.norm(dim=-1)[hit], out.opacity[hit], atol=5e-3, rtol=0)


def test_oracle_normal_maps_agree_with_the_rendered_normal_of_the_true_shape(rendered):
    views, rays, out = rendered
    assert views.normals is not None and views.normals.dtype == np.float32
    inside = views.masks == 1
    np.testing.assert_allclose(np.linalg.norm(views.normals[inside], axis=-1), 1, atol=1e-4)
    assert np.all(views.normals[views.masks == 0] == 0)
    # the maps, area-averaged to the rays and turned into world space, against the SDF render of the same shape
    share = rays.normal.norm(dim=-1)
    both = (share > 0.999) & (out.opacity > 0.99)
    assert both.sum() > 1000
    cos = (F.normalize(out.normal[both], dim=-1) * F.normalize(rays.normal[both], dim=-1)).sum(-1)
    assert cos.min() > 0.999
    assert float(share[out.opacity < 0.01].max()) == 0  # rays that miss the object have no target
    # the default oracle (the bars) carries no normals
    assert oracle_views(trimesh.creation.icosphere(subdivisions=1, radius=0.5), supersample=1).views.normals is None


MESHES = Path(__file__).resolve().parents[1] / "data" / "meshes"


@pytest.fixture(scope="module")
def table():
    gt = load_mesh(MESHES / "wooden_table.glb")
    return gt, oracle_views(gt, normals=True).views


def test_views_without_normals_fit_exactly_as_before(table):
    _, views = table
    tiny = ReconConfig(image_size=48, hull_resolution=32, resolutions=(24,), iterations=(12,), rays=256, samples=16)
    plain = dataclasses.replace(views, normals=None)
    a = fit_fields(plain, tiny, device="cpu", progress=False, seed=3)
    b = fit_fields(views, dataclasses.replace(tiny, normal_weight=0.0), device="cpu", progress=False, seed=3)
    c = fit_fields(views, tiny, device="cpu", progress=False, seed=3)
    # the normal maps change nothing unless weighted: same rays, same random draws, same steps
    assert torch.equal(a.grid.sdf, b.grid.sdf) and torch.equal(a.grid.colour, b.grid.colour)
    assert "normal" not in a.losses and "normal" not in b.losses
    assert "normal" in c.losses and not torch.equal(a.grid.sdf, c.grid.sdf)


def test_oracle_normals_make_the_cpu_preset_fit_better(table):
    # measured (benchmarks/RESULTS.md): Chamfer 0.0218 -> 0.0144, F@0.05 0.881 -> 0.985
    gt, views = table
    quality = {}
    for name, with_normals in (("without", None), ("with", views.normals)):
        oracle = dataclasses.replace(views, normals=with_normals)
        fields = fit_fields(oracle, CPU.recon, device="cpu", progress=False)
        quality[name] = chamfer_fscore(finish_mesh(fields, oracle, CPU.mesh, CPU.texture), gt, samples=30000)
    assert quality["with"]["chamfer"] < 0.9 * quality["without"]["chamfer"], quality
    assert quality["with"]["fscore@0.05"] > quality["without"]["fscore@0.05"] + 0.01, quality
