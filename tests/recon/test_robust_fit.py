"""The fit's remedies for imperfect generated views, on oracle views of real meshes made imperfect in one known way.

- Camera refinement: one view shifted by a few pixels is pulled back (the corrected camera moves the view's
  projection of the object by the shift, within 0.5 px), and the views that were right stay put. Measured alone:
  with the edge band, the dilated hull and colour compensation on too, the CPU preset recovered (2.48, -1.66) px of
  (3, -2), 0.62 px off. Corrections held fixed after the first stages (``camera_stages``) cast the rays the learnt
  ones cast and take no gradient (learnt in the CPU preset's coarse first stage only, right views moved by more than
  0.5 px: benchmarks/RESULTS.md).
- Registration: one view shifted by a few pixels costs the fitted shape (occupancy IoU against the mesh) less than
  half of what it costs unregistered; the fields then also bend (a finer field opens), where for views that agree
  they do not.
- Colour compensation: one view with doubled exposure leaves the fitted albedo as the clean views give it (measured
  on spot with the CPU preset: mean difference 0.023 with compensation, 0.041 without).
- The tolerant hull: a mask that misses a thin part (the table's legs) in one view does not delete that part from the
  hull, also when every view is misregistered by two pixels (a plain 5-of-6 vote keeps 75 % / 40 % of the legs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from img2mesh.config import load_config
from recon.cameras import project_points, zero123pp_cameras
from recon.evaluation.metrics import occupancy
from recon.evaluation.oracle import load_mesh, oracle_views
from recon.fit import fit_fields
from recon.sdf_grid import sample_grid
from recon.view_refinement import (
    ColourCompensation,
    PoseRefinement,
    ViewWarp,
    field_at,
    gauge_basis,
    undo_colour,
    warp_images,
)
from recon.visual_hull import Hull
from recon.volume_render import Rendered, pixel_rays

MESHES = Path(__file__).resolve().parents[1] / "data" / "meshes"
CPU = load_config("cpu")
ROBUST = load_config("robust")
#: The CPU preset with every remedy off, so that each test below measures one remedy alone.
PLAIN = dataclasses.replace(
    CPU.recon, camera_refinement=False, colour_compensation=False, hull_dilation=0.0, registration=False
)


@pytest.fixture(scope="module")
def spot():
    gt = load_mesh(MESHES / "spot.obj")
    return gt, oracle_views(gt).views


def shifted(views, view: int, dx: int, dy: int):
    """``views`` with one view's image and mask moved by (dx, dy) whole pixels (right, down) over the background."""
    images, masks = views.images.copy(), views.masks.copy()
    images[view] = np.roll(images[view], (dy, dx), axis=(0, 1))
    masks[view] = np.roll(masks[view], (dy, dx), axis=(0, 1))
    return dataclasses.replace(views, images=images, masks=masks)


def test_camera_refinement_pulls_a_shifted_view_back(spot):
    gt, views = spot
    shift = np.array([3.0, -2.0])
    recon = dataclasses.replace(PLAIN, camera_refinement=True)
    fields = fit_fields(shifted(views, 2, *shift.astype(int)), recon, device="cpu", progress=False)
    points = torch.as_tensor(gt.to_geometry().vertices, dtype=torch.float64)
    before, _ = project_points(points, views.intrinsics, views.cam_to_world)
    after, _ = project_points(points, views.intrinsics, fields.cam_to_world)
    moved = (after - before).mean(1).numpy()  # (6, 2) mean image motion of the object per view, pixels
    assert np.linalg.norm(moved[2] - shift) <= 0.5, moved
    others = np.delete(moved, 2, axis=0)
    assert np.linalg.norm(others, axis=1).max() <= 0.5, moved


def test_the_gauge_spans_a_move_of_the_whole_object_and_not_one_view_alone():
    # What the projection removes from the fields: the joint image motion of a small 3D shift, turn and scaling of the
    # object (each view's nodes lifted to the origin's depth), and only a small part of a shift of one view.
    k, c2w = zero123pp_cameras("v1.2")
    gauge = gauge_basis(k, c2w, 320, 2).double()
    assert gauge.shape == (7, 6 * 2 * 2 * 2)
    depth = np.linalg.norm(c2w[:, :3, 3], axis=1)
    moved = []
    for n in range(6):
        corners = np.array([[0, 0], [320, 0], [0, 320], [320, 320]], dtype=np.float64)
        cam = np.stack(
            [(corners[:, 0] - k[n, 0, 2]) / k[n, 0, 0], -(corners[:, 1] - k[n, 1, 2]) / k[n, 1, 1], -np.ones(4)], -1
        )
        points = torch.as_tensor(cam * depth[n] @ c2w[n, :3, :3].T + c2w[n, :3, 3])
        turn = torch.as_tensor(Rotation.from_rotvec([0.004, -0.003, 0.002]).as_matrix())
        after = 1.01 * points @ turn.T + torch.tensor([0.01, -0.02, 0.015], dtype=torch.float64)
        moved.append(project_points(after, k[n], c2w[n])[0] - project_points(points, k[n], c2w[n])[0])
    whole = torch.stack(moved).reshape(-1)
    assert torch.linalg.norm(gauge @ whole) > 0.99 * torch.linalg.norm(whole)
    one = torch.zeros(6, 2, 2, 2, dtype=torch.float64)
    one[2] = torch.tensor([3.0, -2.0], dtype=torch.float64)
    flat = one.reshape(-1)
    free = flat - (gauge @ flat) @ gauge  # what registration may still do with it: most of it (0.85 measured)
    assert torch.linalg.norm(free) > 0.8 * torch.linalg.norm(flat)


def test_registration_undoes_most_of_what_a_shifted_view_costs_the_shape(spot):
    # The fields of the six views are pinned to the cameras' gauge, so one view's shift is not read off its own
    # field alone (part of it is what moving the object would explain): the test is what the shift does to the shape.
    gt, views = spot
    lo, hi = gt.bounds
    ticks = [np.linspace(a, b, 40) for a, b in zip(lo, hi, strict=True)]
    points = np.stack(np.meshgrid(*ticks, indexing="ij"), -1).reshape(-1, 3)
    inside = occupancy(gt, points)

    def iou(recon, fitted_views) -> float:
        fields = fit_fields(fitted_views, recon, device="cpu", progress=False)
        occupied = (fields.grid.signed_distance(torch.as_tensor(points, dtype=torch.float32)) < 0).numpy()
        return (occupied & inside).sum() / (occupied | inside).sum()

    moved = shifted(views, 2, 3, -2)
    clean, unregistered = iou(PLAIN, views), iou(PLAIN, moved)
    # Unlocked early: the CPU preset's few steps leave a late-unlocked field too little time (measured with the
    # default penalty: clean 0.9349, shifted 0.9278, registered from 5 % of the steps 0.9329, from 50 % 0.9281).
    # The coarse fields alone: a bend opened this early in the CPU preset's coarse grids follows a shape still crude
    # (IoU 0.84 here); in the default preset it gains on this case (benchmarks/RESULTS.md, run I).
    early = dataclasses.replace(PLAIN, registration=True, registration_warmup=0.05, registration_bend_cells=0)
    registered = iou(early, moved)
    assert clean - unregistered > 0.004  # the shift does cost the shape, so this test tells
    assert registered - unregistered > 0.5 * (clean - unregistered), (clean, unregistered, registered)


def test_the_fields_bend_only_for_views_that_disagree(spot):
    # The bend's threshold is in pixels of the fitted image (128 px here): one view 9.4 px off at the views' 320 px
    # moves the coarse fields by 0.89 px root mean square over all views' nodes, the views as given by 0.09 px.
    _, views = spot
    registered = dataclasses.replace(PLAIN, registration=True)
    for fitted, cells in ((shifted(views, 2, 8, -5), 3), (views, 2)):
        fields = fit_fields(fitted, registered, device="cpu", progress=False)
        assert fields.view_warps.shape[1] == cells
        # What run.json reports: how far the views disagreed, and whether their fields bent.
        summary = fields.registration_summary()
        assert summary["nodes"] == cells
        assert (summary["disagreement_px"] > registered.registration_bend_above) == (cells == 3), summary
        assert f"of {cells} nodes a side" in fields.registration_sentence()


def test_the_bend_opens_at_its_step_only_for_fields_that_moved():
    size, count = 32, 6
    no_gauge = torch.zeros(0, count * 2 * 2 * 2), torch.zeros(0, count * 3 * 3 * 2)
    warp = ViewWarp(torch.rand(count, size, size, 4), 2, 0.0, no_gauge[0], "length", no_gauge[1], bend_above=0.3)
    pixel = torch.rand(300, 2, generator=torch.Generator().manual_seed(1)) * size
    view = torch.arange(300) % count

    def bend_gradient() -> float:
        warp.offset.grad = warp.bend.grad = None
        (warp.displacement(view, pixel).sum() + warp.penalty()).backward()
        return float(warp.bend.grad.abs().sum())

    with torch.no_grad():
        warp.offset.fill_(0.1)  # views that agree: their fields stay near zero
    warp.decide(torch.tensor(1.0))
    assert not warp.bend_open and bend_gradient() == 0.0 and warp.fields().shape == (count, 2, 2, 2)
    with torch.no_grad():
        warp.offset.copy_(torch.randn(count, 2, 2, 2, generator=torch.Generator().manual_seed(0)))
    warp.decide(torch.tensor(0.0))  # not the deciding step
    assert not warp.bend_open
    warp.decide(torch.tensor(1.0))
    assert warp.bend_open and bend_gradient() > 0
    warp.decide(torch.tensor(0.0))
    assert warp.bend_open  # stays open
    with torch.no_grad():
        warp.bend.copy_(torch.randn(count, 3, 3, 2, generator=torch.Generator().manual_seed(2)))
    # The fields baked with are the coarse and the fine summed on the fine nodes, exactly (bilinear per cell).
    summed = torch.as_tensor(warp.fields()) * size
    cells = torch.tensor([2 / size, 2 / size])
    torch.testing.assert_close(field_at(summed, view, pixel * cells), warp.displacement(view, pixel), atol=1e-4, rtol=0)


def test_registered_views_read_through_the_field():
    # What the bake sees: each pixel takes the colour at pixel + field, so a uniform field of +3 px in x moves the
    # view's content 3 px to the left, and a zero field changes nothing.
    images = np.random.default_rng(0).random((2, 24, 24, 3), dtype=np.float32)
    fields = np.zeros((2, 3, 3, 2))
    np.testing.assert_allclose(warp_images(images, fields), images, atol=1e-6)
    fields[1, ..., 0] = 3 / 24
    np.testing.assert_allclose(warp_images(images, fields)[1, :, :-3], images[1, :, 3:], atol=1e-5)


def test_camera_corrections_held_fixed_cast_the_same_rays_and_take_no_gradient(spot):
    # After recon.camera_stages the fit keeps the learnt corrections but sends them no gradient, which is what makes
    # the later stages cost no more than a fit without them.
    _, views = spot
    rays = pixel_rays(views, 16, torch.device("cpu"))
    cameras = PoseRefinement(torch.as_tensor(views.cam_to_world, dtype=torch.float32), 50.0)
    with torch.no_grad():
        cameras.offset.normal_(0, 2, generator=torch.Generator().manual_seed(0))
    learnt, fixed = cameras.apply(rays), cameras.apply(rays, learn=False)
    torch.testing.assert_close(fixed.directions, learnt.directions)
    torch.testing.assert_close(fixed.origins, learnt.origins)
    assert not (rays.directions - learnt.directions).abs().max() < 1e-3  # the corrections do move the rays
    assert learnt.directions.requires_grad and not fixed.directions.requires_grad
    assert not fixed.origins.requires_grad


def test_colour_transform_undone_for_baking_inverts_the_fits_transform():
    # The fit recolours what it renders for each view; the bake undoes that on the view's pixels, so a view that the
    # transformed field matches exactly gives back the field's own colours.
    generator = torch.Generator().manual_seed(0)
    colours = ColourCompensation(6, torch.device("cpu"))
    with torch.no_grad():
        colours.affine.normal_(0, 0.05, generator=generator)
    field = torch.rand(6, 40, 3, generator=generator) * 0.6 + 0.2  # clear of 0 and 1, where the transform clips
    view = torch.arange(6).repeat_interleave(40)
    rendered = Rendered(field.reshape(-1, 3), torch.ones(240), torch.zeros(240))
    with torch.no_grad():
        seen = colours.apply(rendered, view, torch.zeros(240, 3)).rgb.reshape(6, 1, 40, 3).numpy()
    restored = undo_colour(seen, colours.affine.detach().numpy())
    assert np.abs(seen - field.numpy()[:, None]).max() > 0.02  # the transforms do change the colours
    np.testing.assert_allclose(restored, field.numpy()[:, None], atol=1e-5)


def test_colour_compensation_keeps_the_albedo_of_a_doubled_exposure(spot):
    gt, views = spot
    images = views.images.copy()
    mask = views.masks[2][..., None]
    images[2] = np.clip(images[2] * 2, 0, 1) * mask + images[2] * (1 - mask)
    brighter = dataclasses.replace(views, images=images)
    points = torch.as_tensor(gt.to_geometry().vertices, dtype=torch.float32)
    clean = fit_fields(views, PLAIN, device="cpu", progress=False).grid.albedo(points)
    compensated = dataclasses.replace(PLAIN, colour_compensation=True)
    fields = fit_fields(brighter, compensated, device="cpu", progress=False)
    albedo = fields.grid.albedo(points)
    assert float((albedo - clean).abs().mean()) <= 0.03
    assert float((albedo.mean(0) - clean.mean(0)).abs().max()) <= 0.015
    # the doubled view took the change: the others' transforms stay at the identity
    others = np.delete(fields.colour_transforms, 2, axis=0)
    assert np.abs(others).max() <= 0.02 < np.abs(fields.colour_transforms[2]).max()


@pytest.mark.parametrize("misregistered", [False, True])
def test_hull_keeps_a_thin_part_missing_from_one_mask(misregistered):
    gt = load_mesh(MESHES / "wooden_table.glb")
    views = oracle_views(gt).views
    points, _ = trimesh.sample.sample_surface(gt.to_geometry(), 20000, seed=0)
    height = points[:, 2]
    legs = torch.as_tensor(points[height < height.min() + 0.5 * np.ptp(height)], dtype=torch.float32)
    masks = views.masks.copy()
    rows = np.nonzero(masks[1].max(1) > 0.5)[0]
    masks[1][int(rows.min() + 0.35 * np.ptp(rows)) :] = 0  # view 1 loses everything below the table top
    if misregistered:
        shifts = [(2, 0), (0, -2), (-2, 0), (0, 2), (2, 0), (0, 2)]  # (down, right) pixels, one per view
        masks = np.stack([np.roll(m, shift, axis=(0, 1)) for m, shift in zip(masks, shifts, strict=True)])
    views = dataclasses.replace(views, masks=masks)

    def kept(min_views: int, dilation: float) -> float:
        hull = Hull.carve(views, CPU.recon.bound, 128, min_views, torch.device("cpu"), dilation)
        inside = sample_grid(hull.occupied.float()[None, None], hull.cube, legs)[..., 0] > 0.5
        return float(inside.float().mean())

    assert kept(ROBUST.recon.hull_min_views, ROBUST.recon.hull_dilation) >= 0.97
    assert kept(6, 0.0) < 0.05  # every view's vote: the one bad mask deletes the legs


@pytest.mark.parametrize("kind", ["squared", "length"])
def test_registration_penalty_kinds(kind):
    # The length penalty pulls a small displacement back as hard as a large one (the small moves that fields learn
    # on views that were right go back to zero); the squared one's pull fades with the displacement.
    warp = ViewWarp(torch.zeros(6, 8, 8, 4), 2, 0.0, torch.zeros(0, 6 * 2 * 2 * 2), kind)
    pulls = []
    for size in (0.1, 2.0):
        with torch.no_grad():
            warp.offset.copy_(torch.tensor([0.6, 0.8]) * size)  # every node moved by ``size`` pixels
        warp.offset.grad = None
        warp.penalty().backward()
        pulls.append(float(warp.offset.grad.norm(dim=-1).mean()))
        expected = size**2 if kind == "squared" else (size**2 + 1e-4) ** 0.5
        assert float(warp.penalty().detach()) == pytest.approx(expected, rel=1e-5)
    ratio = pulls[1] / pulls[0]
    assert ratio == pytest.approx(20.0 if kind == "squared" else 1.0, rel=0.01), pulls
