"""The visual hull contains the object, hugs a convex one, takes its colours from the right views, and votes."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from recon.cameras import intrinsics, zero123pp_cameras
from recon.evaluation.hull_baseline import visual_hull
from recon.evaluation.metrics import occupancy
from recon.posed_views import PosedViews
from recon.render import render_views

SIZE = 128
RADIUS = 0.7


def _views(mesh) -> PosedViews:
    """The six Zero123++ cameras at a small image size, rendered unlit with exact alpha."""
    _, c2w = zero123pp_cameras("v1.2")
    k = np.repeat(intrinsics(30.0, SIZE)[None], 6, axis=0)
    render = render_views(mesh, k, c2w, SIZE, SIZE, "unlit", 0.5)
    return PosedViews(render.rgb.astype(np.float32), render.alpha.astype(np.float32), k, c2w)


@pytest.fixture(scope="module")
def two_tone_sphere() -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=RADIUS)
    colors = np.where(sphere.vertices[:, 2:3] > 0, [[220, 30, 30, 255]], [[30, 30, 220, 255]]).astype(np.uint8)
    sphere.visual.vertex_colors = colors
    return sphere


@pytest.fixture(scope="module")
def sphere_views(two_tone_sphere) -> PosedViews:
    return _views(two_tone_sphere)


def test_hull_of_a_sphere_contains_it_and_stays_close(sphere_views):
    hull = visual_hull(sphere_views, resolution=64)
    radii = np.linalg.norm(hull.vertices, axis=1)
    voxel = 2.0 / 63
    assert hull.is_watertight and hull.volume > 0
    assert radii.min() > RADIUS * 0.97 - voxel  # never inside the (slightly faceted) sphere
    assert np.percentile(radii, 50) < RADIUS * 1.06  # six views of a sphere carve it nearly round
    assert radii.max() < RADIUS * 1.35


def test_hull_colours_come_from_the_visible_side(sphere_views):
    hull = visual_hull(sphere_views, resolution=64)
    colors = hull.visual.vertex_colors[:, :3].astype(int)
    top, bottom = hull.vertices[:, 2] > 0.2, hull.vertices[:, 2] < -0.2
    assert np.mean(colors[top, 0] > colors[top, 2]) > 0.95
    assert np.mean(colors[bottom, 2] > colors[bottom, 0]) > 0.95


def test_hull_of_a_box_contains_the_box():
    box = trimesh.creation.box(extents=(1.2, 0.5, 0.8))
    hull = visual_hull(_views(box), resolution=64)
    assert np.all(hull.extents > box.extents - 2.0 / 63)
    inner_points = trimesh.sample.sample_surface(box, 2000, seed=0)[0] * 0.97
    assert occupancy(hull, inner_points).all()
    assert hull.volume > box.volume


def test_tolerance_survives_one_broken_mask(sphere_views):
    broken = PosedViews(
        sphere_views.images.copy(),
        sphere_views.masks.copy(),
        sphere_views.intrinsics,
        sphere_views.cam_to_world,
    )
    broken.masks[2] = 0.0  # one view lost its object
    with pytest.raises(ValueError, match="carve away everything"):
        visual_hull(broken, resolution=32)
    hull = visual_hull(broken, resolution=32, tolerance=1)
    assert RADIUS * 0.9 < np.median(np.linalg.norm(hull.vertices, axis=1)) < RADIUS * 1.3
