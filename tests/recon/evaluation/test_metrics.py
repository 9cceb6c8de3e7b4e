"""Metrics give ~0 / 1 for a mesh against itself and order known perturbations correctly."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from recon.evaluation import metrics
from recon.evaluation.metrics import novel_view_metrics

# smaller than the benchmark's defaults (100k samples, 64^3) to keep CI fast; the properties tested are the same
SAMPLES, RESOLUTION = 20_000, 32


def chamfer_fscore(pred, gt):
    return metrics.chamfer_fscore(pred, gt, samples=SAMPLES)


def volume_iou(pred, gt):
    return metrics.volume_iou(pred, gt, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def blob() -> trimesh.Trimesh:
    """A lumpy, non-symmetric closed surface with light-clay default colour."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    v = sphere.vertices
    bumps = 1 + 0.15 * np.sin(3 * v[:, 0]) * np.cos(2 * v[:, 1]) + 0.2 * (v[:, 2] > 0.3)
    return trimesh.Trimesh(v * bumps[:, None] * np.array([1.3, 1.0, 0.8]), sphere.faces, process=False)


def _noisy(mesh: trimesh.Trimesh, sigma: float) -> trimesh.Trimesh:
    rng = np.random.default_rng(7)
    return trimesh.Trimesh(mesh.vertices + rng.normal(0, sigma, mesh.vertices.shape), mesh.faces, process=False)


def test_a_mesh_against_itself_scores_perfectly_even_moved_and_scaled(blob):
    same = chamfer_fscore(blob, blob)
    assert same["chamfer"] < 0.008  # only the two independent surface samplings differ
    assert same["fscore@0.02"] > 0.99 and same["fscore@0.05"] == 1.0
    moved = blob.copy()
    moved.apply_scale(2.5)
    moved.apply_translation((0.3, -1.0, 2.0))
    assert chamfer_fscore(moved, blob)["chamfer"] == pytest.approx(same["chamfer"], rel=0.05)
    assert volume_iou(moved, blob) > 0.99


def test_growing_noise_makes_every_score_worse(blob):
    scores = [chamfer_fscore(_noisy(blob, sigma), blob) for sigma in (0.0, 0.005, 0.02, 0.05)]
    chamfers = [s["chamfer"] for s in scores]
    assert chamfers == sorted(chamfers) and chamfers[-1] > 3 * chamfers[1]
    for key in ("fscore@0.02", "fscore@0.05"):
        values = [s[key] for s in scores]
        assert values == sorted(values, reverse=True) and values[-1] < values[0]


def test_a_removed_part_costs_recall(blob):
    scene = trimesh.Scene()
    scene.add_geometry(blob, node_name="body")
    scene.add_geometry(
        trimesh.creation.box(extents=(0.3, 0.3, 0.3)),
        node_name="block",
        transform=trimesh.transformations.translation_matrix((0.0, 1.1, 0.0)),
    )
    full = chamfer_fscore(scene, scene)
    missing = chamfer_fscore(blob, scene)
    assert missing["chamfer"] > 5 * full["chamfer"]
    assert missing["fscore@0.05"] < full["fscore@0.05"] - 0.05
    assert volume_iou(blob, scene) < volume_iou(scene, scene)


def test_surface_inside_the_ground_truth_costs_recall_not_precision():
    # Like the cake's inner layers: an interior plate leaves the bounding box (and so the normalisation) unchanged;
    # a closed box without it puts every point on the ground truth but misses the plate's surface.
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    layered = trimesh.util.concatenate([cube, trimesh.creation.box(extents=(0.9, 0.9, 0.02))])
    scores = chamfer_fscore(cube, layered)
    plate_share = 2 * 0.81 / layered.area  # its two faces, all at least 0.05 from the box; the thin rim is not
    assert scores["precision@0.05"] > 0.999
    assert scores["recall@0.05"] == pytest.approx(1 - plate_share, abs=0.01)


def test_volume_iou_of_nested_boxes_is_analytic():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    slab = trimesh.creation.box(extents=(1.0, 1.0, 0.5))  # same footprint after normalisation, half the height
    assert volume_iou(slab, cube) == pytest.approx(0.5, abs=1e-6)
    cavity = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    cavity.invert()  # inward-facing: a hollow cube whose parity is odd only in the shell
    hollow = trimesh.util.concatenate([cube, cavity])
    assert volume_iou(hollow, cube) == pytest.approx(1 - 0.125, abs=1e-6)


def test_novel_views_score_identity_perfectly_and_rank_shifted_copies_lower(blob):
    same = novel_view_metrics(blob, blob, size=64, pred_lighting="lit")
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    scores = []
    for shift in (0.03, 0.1):
        moved = blob.copy()
        moved.apply_translation((0.0, shift, 0.0))
        scores.append(novel_view_metrics(moved, blob, size=64, pred_lighting="lit"))
    assert scores[1]["psnr"] < scores[0]["psnr"] < same["psnr"]
    assert scores[1]["ssim"] < scores[0]["ssim"] < same["ssim"]


def test_a_box_hidden_inside_another_is_the_unseen_share():
    # Outer cube of side 0.8 (area 3.84), a cube of side 0.4 (area 0.96) inside it: no camera sees the inner one, and
    # the six views see every face of the outer one, so a fifth of the area is unseen; alone, the outer cube is seen.
    from recon.cameras import zero123pp_cameras

    outer = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    inner = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    k, c2w = zero123pp_cameras("v1.2", image_size=320)
    nested = metrics.unseen_share(trimesh.util.concatenate([outer, inner]), k, c2w, 320)
    assert nested == pytest.approx(0.96 / 4.8, abs=0.01)
    assert metrics.unseen_share(outer, k, c2w, 320) < 0.002
    assert metrics.unseen_share(outer, k[:1], c2w[:1], 320) > 0.4  # one view sees at most three of six faces
