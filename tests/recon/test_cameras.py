"""The camera conventions of recon.cameras against an independent reference and hand-derived projections."""

import math

import numpy as np
import pytest

from recon.cameras import (
    gltf_to_world,
    intrinsics,
    look_at,
    pose_set,
    project,
    world_to_gltf,
    zero123pp_cameras,
)

# Camera-to-world (3x4) of the six v1.2 views at radius 4, as InstantMesh computes them for Zero123++
# (rounded to 6 decimals).
INSTANTMESH_V12_C2W = np.array(
    [
        [[-0.5, -0.296198, 0.813798, 3.255191], [0.866025, -0.17101, 0.469846, 1.879385],
         [0, 0.939693, 0.34202, 1.368081]],
        [[-1, 0, 0, 0], [0, 0.173648, 0.984808, 3.939231], [0, 0.984808, -0.173648, -0.694593]],
        [[-0.5, 0.296198, -0.813798, -3.255191], [-0.866025, -0.17101, 0.469846, 1.879385],
         [0, 0.939693, 0.34202, 1.368081]],
        [[0.5, -0.150384, -0.852869, -3.411474], [-0.866025, -0.086824, -0.492404, -1.969616],
         [0, 0.984808, -0.173648, -0.694593]],
        [[1, 0, 0, 0], [0, 0.34202, -0.939693, -3.75877], [0, 0.939693, 0.34202, 1.368081]],
        [[0.5, 0.150384, 0.852869, 3.411474], [0.866025, -0.086824, -0.492404, -1.969616],
         [0, 0.984808, -0.173648, -0.694593]],
    ]
)  # fmt: skip


def test_v12_matrices_match_instantmesh():
    k, c2w = zero123pp_cameras("v1.2", radius=4.0, image_size=320)
    np.testing.assert_allclose(c2w[:, :3, :], INSTANTMESH_V12_C2W, atol=1e-6)
    np.testing.assert_array_equal(c2w[:, 3, :], np.tile([0.0, 0.0, 0.0, 1.0], (6, 1)))
    # InstantMesh's normalised focal 0.5 / tan(15 deg) = 1.8660254, i.e. 597.13 px at 320 px, centre 0.5.
    np.testing.assert_allclose(k[:, 0, 0] / 320, 1.8660254, atol=1e-7)
    np.testing.assert_allclose(k[:, 1, 1], k[:, 0, 0])
    np.testing.assert_allclose(k[:, :2, 2], 160.0)


def test_matrices_are_rigid_and_look_at_the_origin():
    for version in ("v1.2", "v1.1"):
        _, c2w = zero123pp_cameras(version, radius=2.5)
        rotation = c2w[:, :3, :3]
        np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.tile(np.eye(3), (6, 1, 1)), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(rotation), 1.0)
        np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3], axis=1), 2.5)
        # The camera looks down its -Z axis, straight at the origin.
        forward = -c2w[:, :3, 2]
        np.testing.assert_allclose(forward, -c2w[:, :3, 3] / 2.5, atol=1e-12)


def test_pose_tables():
    v12, v11 = pose_set("v1.2"), pose_set("v1.1")
    assert v12.azimuths == v11.azimuths == (30, 90, 150, 210, 270, 330)
    assert v12.elevations == (20, -10, 20, -10, 20, -10) and v12.fov == 30.0
    assert v11.elevations == (30, -20, 30, -20, 30, -20)
    assert v11.fov == pytest.approx(49.134, abs=1e-3)
    _, c2w = zero123pp_cameras("v1.1")
    elevations = np.degrees(np.arcsin(c2w[:, 2, 3] / 4.0))
    np.testing.assert_allclose(elevations, v11.elevations, atol=1e-9)
    with pytest.raises(ValueError, match=r"v1\.2"):
        pose_set("v2")


def test_intrinsics_for_any_view_size():
    # v1.1's field of view is 2 atan(16 / 35): the focal is exactly 350 px at 320 px.
    k11, _ = zero123pp_cameras("v1.1", image_size=320)
    np.testing.assert_allclose(k11[0], [[350.0, 0, 160.0], [0, 350.0, 160.0], [0, 0, 1]], atol=1e-9)
    k = intrinsics(30.0, 640, 480)
    assert k[0, 0] == pytest.approx(320 / math.tan(math.radians(15)))
    assert (k[0, 2], k[1, 2]) == (320.0, 240.0)
    k_big, _ = zero123pp_cameras("v1.2", image_size=640)
    k_small, _ = zero123pp_cameras("v1.2", image_size=320)
    np.testing.assert_allclose(k_big[:, :2], 2 * k_small[:, :2])


def test_origin_projects_to_the_image_centre():
    k, c2w = zero123pp_cameras("v1.2", radius=4.0)
    for i in range(6):
        uv, depth = project(np.zeros((1, 3)), k[i], c2w[i])
        np.testing.assert_allclose(uv, [[160.0, 160.0]], atol=1e-9)
        np.testing.assert_allclose(depth, [4.0])


def test_known_points_land_on_hand_computed_pixels():
    """View 1 (azimuth 90, elevation -10) sits on +Y looking towards -Y with +Z up, so world -X is image right."""
    k, c2w = zero123pp_cameras("v1.2", radius=4.0)
    f = 160 / math.tan(math.radians(15))
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    points = np.array([[-1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    uv, depth = project(points, k[1], c2w[1])
    # (-1, 0, 0) is 1 to the right at depth 4 (the camera is at (0, 4c, -4s)); (1, 0, 0) mirrors it.
    np.testing.assert_allclose(uv[0], [160 + f / 4, 160.0], atol=1e-9)
    np.testing.assert_allclose(uv[1], [160 - f / 4, 160.0], atol=1e-9)
    # (0, 0, 1): camera-space y = c, depth 4 + s, so it appears above the centre (v grows downwards).
    np.testing.assert_allclose(uv[2], [160.0, 160 - f * c / (4 + s)], atol=1e-9)
    np.testing.assert_allclose(depth, [4.0, 4.0, 4 + s], atol=1e-12)


def test_points_at_the_field_of_view_edge_land_on_the_image_border():
    k, c2w = zero123pp_cameras("v1.1", radius=3.0, image_size=256)
    half = math.tan(math.radians(pose_set("v1.1").fov) / 2)
    for i in range(6):
        camera_points = np.array([[half * 2, 0, -2], [0, -half * 5, -5], [-half, half, -1]])
        world = camera_points @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        uv, _ = project(world, k[i], c2w[i])
        np.testing.assert_allclose(uv, [[256, 128], [128, 256], [0, 0]], atol=1e-9)


def test_look_at_straight_down_is_still_a_rotation():
    c2w = look_at(np.array([0.0, 0.0, 3.0]))
    np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [0, 0, 1])


def test_gltf_axes_put_the_input_side_on_plus_z():
    np.testing.assert_allclose(world_to_gltf(np.array([[1.0, 0, 0], [0, 0, 1.0]])), [[0, 0, 1], [0, 1, 0]])
    points = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(gltf_to_world(world_to_gltf(points)), points)
