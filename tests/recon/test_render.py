"""The rasteriser against analytic cases: a sphere's silhouette and depth, a texture's placement, parts and colours."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from recon.cameras import camera_position, intrinsics, look_at, project
from recon.render import AMBIENT, DIFFUSE, LIGHT_DIRECTION, Render, prepare_mesh, rasterize, render_views

SIZE = 160
K = intrinsics(30.0, SIZE)
FRONT = look_at(camera_position(0.0, 0.0, 4.0))  # on +X looking at the origin: image right = +Y, image up = +Z


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=0.8)


def render_one(mesh, k, cam_to_world, width: int, height: int, **options) -> Render:
    """One camera's render through the batched renderer, as (H, W, ...) arrays."""
    batch = render_views(mesh, np.asarray(k)[None], np.asarray(cam_to_world)[None], width, height, **options)
    return Render(batch.rgb[0], batch.alpha[0], batch.depth[0])


def _pixel(point) -> tuple[float, float]:
    """Pixel coordinates (u, v) of one world point."""
    uv, _ = project(np.array([point], float), K, FRONT)
    return float(uv[0, 0]), float(uv[0, 1])


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:size, 0:size] + 0.5
    return u, v


def test_sphere_silhouette_and_depth_match_the_projection(sphere):
    render = render_one(sphere, K, FRONT, SIZE, SIZE, supersample=1)
    f, c = K[0, 0], SIZE / 2
    radius_px = f * 0.8 / math.sqrt(4.0**2 - 0.8**2)  # tangent cone of the sphere seen from distance 4
    u, v = _pixel_centres(SIZE)
    distance = np.hypot(u - c, v - c)
    assert np.all(render.alpha[distance < radius_px - 0.5] == 1)
    assert np.all(render.alpha[distance > radius_px + 0.5] == 0)
    # depth along the viewing axis: ray-sphere intersection for every covered pixel centre
    rays = np.stack([(u - c) / f, -(v - c) / f, -np.ones_like(u)], axis=-1)  # camera space, z = -1
    origin = np.array([0.0, 0.0, 4.0])  # sphere centre in camera space is (0, 0, -4)
    a, b = (rays**2).sum(-1), 2 * (rays * origin).sum(-1)
    disc = b**2 - 4 * a * (16 - 0.64)
    inner = distance < 0.9 * radius_px  # near the rim the facets of the mesh depart from the sphere in depth
    t = (-b[inner] - np.sqrt(disc[inner])) / (2 * a[inner])
    np.testing.assert_allclose(render.depth[inner], t, atol=2e-3)
    assert render.depth[SIZE // 2, SIZE // 2] == pytest.approx(4.0 - 0.8, abs=1e-3)
    assert np.all(render.depth[render.alpha == 0] == 0)


def test_supersampled_alpha_measures_the_disc_area(sphere):
    render = render_one(sphere, K, FRONT, SIZE, SIZE, supersample=4)
    radius_px = K[0, 0] * 0.8 / math.sqrt(16 - 0.64)
    assert render.alpha.sum() == pytest.approx(math.pi * radius_px**2, rel=3e-3)
    assert 0 < np.count_nonzero((render.alpha > 0) & (render.alpha < 1)) < 2 * math.pi * radius_px * 2


def _checker_quad() -> trimesh.Trimesh:
    """A unit quad in the plane x = 0 facing +X, textured with red/green/blue/white quadrants."""
    texture = np.zeros((64, 64, 3), np.uint8)  # fine enough that bilinear blending stays within a pixel
    texture[:32, :32] = (255, 0, 0)  # image top-left
    texture[:32, 32:] = (0, 255, 0)  # top-right
    texture[32:, :32] = (0, 0, 255)  # bottom-left
    texture[32:, 32:] = (255, 255, 255)  # bottom-right
    vertices = np.array([[0, -0.5, -0.5], [0, 0.5, -0.5], [0, 0.5, 0.5], [0, -0.5, 0.5]], float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)  # trimesh: v = 0 is the image bottom
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(texture))
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices, np.array([[0, 1, 2], [0, 2, 3]]), visual=visual, process=False)


def test_texture_lands_where_expected():
    quad = _checker_quad()
    render = render_one(quad, K, FRONT, SIZE, SIZE, lighting="unlit", supersample=1)
    left, top = _pixel((0, -0.25, 0.25))
    right, bottom = _pixel((0, 0.25, -0.25))
    sample = lambda u, v: render.rgb[int(v), int(u)]  # noqa: E731
    np.testing.assert_allclose(sample(left, top), [1, 0, 0], atol=1e-5)
    np.testing.assert_allclose(sample(right, top), [0, 1, 0], atol=1e-5)
    np.testing.assert_allclose(sample(left, bottom), [0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(sample(right, bottom), [1, 1, 1], atol=1e-5)
    # the quad's edge (world y = 0.5) projects where recon.cameras says
    edge_u, _ = _pixel((0, 0.5, 0.0))
    row = render.alpha[SIZE // 2]
    assert row[int(edge_u - 1)] == 1 and row[int(edge_u + 1)] == 0


def test_texture_interpolation_is_perspective_correct():
    # seen obliquely, the texture's middle (world y = 0) projects off the screen-space middle of the quad; an affine
    # (screen-space) interpolation would put the colour boundary there instead
    oblique = look_at(camera_position(65.0, 0.0, 2.5))
    render = render_one(_checker_quad(), K, oblique, SIZE, SIZE, lighting="unlit", supersample=1)
    uv, _ = project(np.array([[0, 0.0, 0.25], [0, -0.5, 0.25], [0, 0.5, 0.25]]), K, oblique)
    (u_mid, v_row), (u_left, _), (u_right, _) = uv
    assert abs(u_mid - (u_left + u_right) / 2) > 4  # the test only means something if the two differ
    row = render.rgb[int(v_row)]
    np.testing.assert_allclose(row[int(u_mid) - 2], [1, 0, 0], atol=1e-5)
    np.testing.assert_allclose(row[int(u_mid) + 2], [0, 1, 0], atol=1e-5)


def test_lit_shading_is_albedo_times_the_fixed_light():
    quad = _checker_quad()
    lit = render_one(quad, K, FRONT, SIZE, SIZE, lighting="lit", supersample=1)
    unlit = render_one(quad, K, FRONT, SIZE, SIZE, lighting="unlit", supersample=1)
    expected = AMBIENT + DIFFUSE * max(LIGHT_DIRECTION[0], 0)  # the quad's normal is +X
    covered = lit.alpha == 1
    np.testing.assert_allclose(lit.rgb[covered], unlit.rgb[covered] * expected, atol=1e-5)
    # the back of the quad is shaded with its normal flipped; seen mirrored, its lower right is blue
    back = look_at(camera_position(180.0, 0.0, 4.0))
    seen_back = render_one(quad, K, back, SIZE, SIZE, lighting="lit", supersample=1)
    flipped = AMBIENT + DIFFUSE * max(-LIGHT_DIRECTION[0], 0)
    np.testing.assert_allclose(seen_back.rgb[SIZE // 2 + 20, SIZE // 2 + 20], np.array([0, 0, 1]) * flipped, atol=1e-5)


def _box(centre, color) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    box.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=np.array([*color, 255], np.uint8))
    )
    box.apply_translation(centre)
    return box


def test_scene_parts_keep_their_material_colours_and_transforms():
    scene = trimesh.Scene()
    scene.add_geometry(_box((0, 0, 0), (200, 30, 30)), node_name="red")
    green = _box((0, 0, 0), (30, 200, 30))
    scene.add_geometry(green, node_name="green_a", transform=trimesh.transformations.translation_matrix((0, 0.6, 0)))
    scene.add_geometry(green, node_name="green_b", transform=trimesh.transformations.translation_matrix((0, -0.6, 0)))
    render = render_one(scene, K, FRONT, SIZE, SIZE, lighting="unlit", supersample=1)
    for point, color in [((0.2, 0, 0), (200, 30, 30)), ((0.2, 0.6, 0), (30, 200, 30)), ((0.2, -0.6, 0), (30, 200, 30))]:
        u, v = _pixel(point)
        np.testing.assert_allclose(render.rgb[int(v), int(u)], np.array(color) / 255, atol=1e-5)
    u, v = _pixel((0.2, 0.3, 0))  # the gap between the boxes
    assert render.alpha[int(v), int(u)] == 0


def test_vertex_colours_are_interpolated():
    mesh = trimesh.Trimesh(
        np.array([[0, -0.6, -0.6], [0, 0.6, -0.6], [0, 0.0, 0.6]]),
        np.array([[0, 1, 2]]),
        vertex_colors=np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]], np.uint8),
        process=False,
    )
    render = render_one(mesh, K, FRONT, SIZE, SIZE, lighting="unlit", supersample=1)
    u, v = _pixel((0, 0.0, -0.2))  # one third of the way up the middle line
    np.testing.assert_allclose(render.rgb[int(v), int(u)], [1 / 3, 1 / 3, 1 / 3], atol=0.02)


def test_batched_chunked_and_repeated_renders_agree(sphere):
    cams = np.stack([FRONT, look_at(camera_position(90.0, 30.0, 4.0))])
    ks = np.stack([K, K])
    batch = render_views(sphere, ks, cams, SIZE, SIZE, supersample=1)
    single = render_one(sphere, K, cams[1], SIZE, SIZE, supersample=1)
    np.testing.assert_array_equal(batch.rgb[1], single.rgb)
    np.testing.assert_array_equal(batch.depth[1], single.depth)
    prepared = prepare_mesh(sphere)
    whole = rasterize(prepared, ks, cams, SIZE, SIZE)
    chunked = rasterize(prepared, ks, cams, SIZE, SIZE, max_candidates=20_000)
    assert torch.equal(whole.face_id, chunked.face_id)
    assert torch.equal(whole.face_id, rasterize(prepared, ks, cams, SIZE, SIZE).face_id)
