"""Texture baking: texels land on the right faces and take the colours of the views that see them, else the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from recon.cameras import intrinsics, orbit_cam_to_world
from recon.evaluation.mesh_checks import atlas_report
from recon.posed_views import PosedViews
from recon.render import render_views
from recon.texture import (
    MIN_PIECE_FACES,
    TextureConfig,
    bake_texture,
    fill_outside,
    matched_colours,
    rasterize_uv,
    split_faces,
    unwrap,
)

RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9), (0.0, 1.0, 0.0)


def test_uv_raster_of_two_triangles_covers_the_square_exactly():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    face_id, bary = rasterize_uv(uv, faces, 16)
    assert (face_id >= 0).all()
    # row 0 is v = 1 (top): the texel at column 0, row 0 is in the upper-left triangle (0, 2, 3)
    assert face_id[0, 0] == 1 and face_id[15, 15] == 0
    torch.testing.assert_close(bary.sum(-1), torch.ones(16, 16))
    # interpolating the corner UVs with the barycentrics gives back the texel centre
    corners = uv[faces[face_id]]
    centre = (corners * bary[..., None]).sum(-2)
    ys, xs = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    torch.testing.assert_close(centre[..., 0], (xs + 0.5) / 16)
    torch.testing.assert_close(centre[..., 1], 1 - (ys + 0.5) / 16)


def test_fill_outside_copies_the_nearest_chart_texel():
    image = np.zeros((4, 4, 3), np.float32)
    image[1, 1] = (1, 0, 0)
    covered = np.zeros((4, 4), bool)
    covered[1, 1] = True
    filled = fill_outside(image, covered)
    assert (filled == (1, 0, 0)).all()


def two_coloured_sphere() -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    colours = np.where(sphere.vertices[:, :1] > 0, RED, BLUE)
    sphere.visual.vertex_colors = np.concatenate([colours * 255, np.full((len(colours), 1), 255)], 1).astype(np.uint8)
    return sphere


def sphere_views(sphere: trimesh.Trimesh, azimuths, elevations, size: int = 96) -> PosedViews:
    c2w = orbit_cam_to_world(azimuths, elevations, 4.0)
    k = np.repeat(intrinsics(30.0, size)[None], len(azimuths), axis=0)
    render = render_views(sphere, k, c2w, size, size, "unlit", 0.5, supersample=2)
    return PosedViews(render.rgb.astype(np.float32), render.alpha.astype(np.float32), k, c2w)


def rendered(mesh: trimesh.Trimesh, azimuth: float, elevation: float, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Unlit colour (H, W, 3) and coverage (H, W) of a mesh seen from an orbit camera."""
    c2w = orbit_cam_to_world((azimuth,), (elevation,), 4.0)
    render = render_views(mesh, intrinsics(30.0, size)[None], c2w, size, size, "unlit", 0.5, supersample=1)
    return render.rgb[0], render.alpha[0]


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return two_coloured_sphere()


def test_bake_projects_the_views_colours_onto_the_surface(sphere):
    views = sphere_views(sphere, (30, 90, 150, 210, 270, 330), (20, -10, 20, -10, 20, -10))
    plain = trimesh.Trimesh(sphere.vertices, sphere.faces)
    baked = bake_texture(plain, views, lambda p: np.tile(GREEN, (len(p), 1)), TextureConfig(size=256))
    assert baked.visual.material.baseColorTexture.size == (256, 256)
    uv = baked.visual.uv
    assert uv.shape == (len(baked.vertices), 2) and uv.min() >= 0 and uv.max() <= 1
    for azimuth, elevation in ((0, 0), (180, 0), (60, 40)):  # novel views
        truth, alpha = rendered(sphere, azimuth, elevation)
        image, _ = rendered(baked, azimuth, elevation)
        inside = alpha > 0.99
        assert np.abs(image[inside] - truth[inside]).mean() < 0.04
        # The field's green only where all six views see the surface at grazing angles (the poles), if at all.
        assert (image[inside][:, 1] > 0.5).mean() < 0.03


def test_gain_matching_evens_out_the_views_exposures_and_leaves_agreeing_views_alone(sphere):
    views = sphere_views(sphere, (30, 90, 150, 210, 270, 330), (20, -10, 20, -10, 20, -10))
    plain = trimesh.Trimesh(sphere.vertices, sphere.faces)
    field = lambda p: np.tile(GREEN, (len(p), 1))  # noqa: E731
    exposed = views.images.copy()
    for view, gain in enumerate((1.15, 0.85, 1.1, 0.9, 1.15, 0.85)):  # each object's exposure, the gray as it was
        exposed[view] *= 1 + (gain - 1) * views.masks[view, ..., None]
    exposed = PosedViews(exposed.clip(0, 1), views.masks, views.intrinsics, views.cam_to_world)

    def error(baked: trimesh.Trimesh) -> float:
        errors = []
        for azimuth, elevation in ((0, 0), (60, 5), (120, 0), (180, 0), (240, 5), (300, 0)):  # between the views
            truth, alpha = rendered(sphere, azimuth, elevation)
            image, _ = rendered(baked, azimuth, elevation)
            errors.append(np.abs(image[alpha > 0.99] - truth[alpha > 0.99]).mean())
        return float(np.mean(errors))

    unmatched, matched = (bake_texture(plain, exposed, field, TextureConfig(size=256, gain_cells=c)) for c in (0, 2))
    assert error(unmatched) > 0.03
    assert error(matched) < 0.5 * error(unmatched)
    untouched = bake_texture(plain, views, field, TextureConfig(size=256, gain_cells=2))
    reference = bake_texture(plain, views, field, TextureConfig(size=256, gain_cells=0))
    assert abs(error(untouched) - error(reference)) < 0.005


def test_gain_matching_brings_an_outlier_view_to_the_rest_not_the_rest_to_it():
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(4000, 3, generator=generator) * 0.8 + 0.1
    colours = truth.repeat(6, 1, 1)
    colours[1] *= 0.6  # one view far darker than the five that agree
    at = torch.rand(6, 4000, 2, generator=generator)
    ratio = (matched_colours(colours, torch.ones(6, 4000), at, cells=2) / truth).mean((1, 2))
    np.testing.assert_allclose(ratio[[0, 2, 3, 4, 5]], 1.0, atol=0.02)  # a plain mean would darken them ~8 %
    assert abs(ratio[1] - 1.0) < 0.06


def test_texels_no_view_sees_take_the_colour_field(sphere):
    views = sphere_views(sphere, (0,), (0,))  # one view from +X: the -X half is never seen
    plain = trimesh.Trimesh(sphere.vertices, sphere.faces)
    baked = bake_texture(plain, views, lambda p: np.tile(GREEN, (len(p), 1)), TextureConfig(size=256))
    front, alpha = rendered(baked, 0, 0)
    back, _ = rendered(baked, 180, 0)
    inside = alpha > 0.99
    np.testing.assert_allclose(np.median(front[inside], axis=0), RED, atol=0.05)  # its rim is grazing: field
    np.testing.assert_allclose(np.median(back[inside], axis=0), GREEN, atol=0.05)


def two_quads(gap: float) -> tuple[np.ndarray, np.ndarray]:
    """UVs and faces of two rectangles side by side, ``gap`` apart in u (negative: overlapping)."""
    a, b = 0.4, 0.4 + gap
    uv = np.array([[0.1, 0.1], [a, 0.1], [a, 0.9], [0.1, 0.9], [b, 0.1], [0.8, 0.1], [0.8, 0.9], [b, 0.9]])
    return uv, np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])


def test_atlas_report_counts_charts_overlap_and_the_gap_between_charts():
    report = atlas_report(*two_quads(3 / 16), 16)
    assert report.charts == 2 and report.overlap == 0 and report.gap == 4  # texel centres 4 columns apart
    report = atlas_report(*two_quads(-0.1), 16)
    assert report.overlap > 0 and report.gap == 1


def test_unwrap_in_pieces_keeps_every_face_and_gives_a_valid_padded_atlas():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.8)  # 5120 faces
    pieces = split_faces(mesh, 4)
    assert sorted(len(p) for p in pieces) == [1280] * 4
    assert np.array_equal(np.sort(np.concatenate(pieces)), np.arange(len(mesh.faces)))
    assert len(split_faces(mesh, 64)) == len(mesh.faces) // MIN_PIECE_FACES  # no piece below the minimum
    vmapping, faces, uv = unwrap(mesh, 256, 2, pieces=4)
    # the same triangles, in another order, over vertices split along the seams
    before = np.sort(np.sort(mesh.faces, axis=1), axis=0)
    after = np.sort(np.sort(vmapping[faces], axis=1), axis=0)
    assert np.array_equal(before, after)
    assert uv.min() >= 0 and uv.max() <= 1
    report = atlas_report(uv, faces, 256)
    assert report.overlap == 0 and report.gap >= 2 and report.coverage > 0.3
    _, whole_faces, whole_uv = unwrap(mesh, 256, 2)
    whole = atlas_report(whole_uv, whole_faces, 256)
    assert report.coverage > 0.85 * whole.coverage  # cutting into pieces wastes little texture
