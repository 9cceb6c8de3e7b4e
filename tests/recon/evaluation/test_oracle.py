"""Oracle views: test meshes load normalised in world z-up, and the grid has Zero123++'s exact geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from recon.cameras import VIEW_SIZE, project, zero123pp_cameras
from recon.errors import InputError
from recon.evaluation.oracle import NORMALISED_RADIUS, load_mesh, normalise, oracle_views
from recon.posed_views import PosedViews
from recon.render import world_geometry

MESHES = Path(__file__).resolve().parents[2] / "data" / "meshes"
MESH_FILES = sorted(p for p in MESHES.glob("*") if p.suffix in (".obj", ".glb"))


@pytest.mark.parametrize("path", MESH_FILES, ids=lambda p: p.name)
def test_every_test_mesh_loads_centred_and_normalised(path):
    scene = load_mesh(path)
    vertices = world_geometry(scene).vertices
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    np.testing.assert_allclose(centre, 0, atol=1e-6)
    assert np.linalg.norm(vertices, axis=1).max() == pytest.approx(NORMALISED_RADIUS, rel=1e-6)


def test_gltf_y_up_becomes_world_z_up():
    # the wooden table's glTF height (+Y) is its smallest extent but one; after loading it must lie along world z
    raw = trimesh.load(MESHES / "wooden_table.glb", force="scene").extents  # glTF (x, y, z)
    loaded = world_geometry(load_mesh(MESHES / "wooden_table.glb")).extents  # world (x, y, z) = glTF (z, x, y)
    np.testing.assert_allclose(loaded / loaded.max(), raw[[2, 0, 1]] / raw.max(), rtol=1e-5)


def test_missing_and_empty_files_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_mesh(tmp_path / "nothing.glb")
    (tmp_path / "empty.obj").write_text("# no faces\nv 0 0 0\n")
    with pytest.raises(InputError):
        load_mesh(tmp_path / "empty.obj")


def _marker_scene() -> trimesh.Scene:
    """A gray body and a small red cube at a known point, normalised like a loaded mesh."""
    body = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    marker = trimesh.creation.box(extents=(0.12, 0.12, 0.12))
    marker.apply_translation((0.3, 0.45, 0.55))
    marker.visual.face_colors = (255, 0, 0, 255)
    scene = trimesh.Scene([body, marker])
    return normalise(scene)


def test_grid_tiles_background_and_marker_positions():
    scene = _marker_scene()
    oracle = oracle_views(scene, photo_size=128)
    grid = np.asarray(oracle.grid)
    assert oracle.grid.size == (640, 960) and grid.shape == (960, 640, 3)
    views = oracle.views
    assert len(views) == 6 and views.size == (VIEW_SIZE, VIEW_SIZE)
    k, c2w = zero123pp_cameras("v1.2")
    np.testing.assert_allclose(views.intrinsics, k)
    np.testing.assert_allclose(views.cam_to_world, c2w)
    marker = world_geometry(scene).vertices[-8:].mean(axis=0)  # the marker cube's centre after normalisation
    for index in range(6):
        row, col = divmod(index, 2)
        tile = grid[row * VIEW_SIZE : (row + 1) * VIEW_SIZE, col * VIEW_SIZE : (col + 1) * VIEW_SIZE]
        np.testing.assert_array_equal(tile, np.round(views.images[index] * 255).astype(np.uint8))
        assert np.all(tile[views.masks[index] == 0] == 127)  # gray 127 wherever nothing is drawn
        uv, _ = project(marker[None], k[index], c2w[index])
        u, v = int(uv[0, 0]), int(uv[0, 1])
        patch = tile[v - 1 : v + 2, u - 1 : u + 2].reshape(-1, 3).astype(int)
        is_red = bool(np.all(patch[:, 0] > 2 * patch[:, 1] + 40))
        # the marker sticks out above the body on the side of azimuth ~56 degrees: from below at azimuth 210 the
        # body hides it (z-buffer), every other view shows it exactly where the camera projects it
        assert is_red == (index != 3), f"view {index}: marker pixels {patch.tolist()}"
    # what the rest of the pipeline makes of the grid is exactly the oracle's views
    parsed = PosedViews.from_grid(oracle.grid, masks=views.masks)
    np.testing.assert_array_equal(parsed.images, views.images)
    np.testing.assert_allclose(parsed.cam_to_world, views.cam_to_world)
    np.testing.assert_allclose(parsed.intrinsics, views.intrinsics)
    photo = np.asarray(oracle.input_photo)
    assert oracle.input_photo.mode == "RGBA" and photo.shape == (128, 128, 4)
    assert photo[..., 3].max() == 255 and photo[0, 0, 3] == 0
