"""Posed views → fitted signed-distance and colour fields: the GPU-bound half of reconstruction.

:func:`fit_fields`: carve the visual hull of the masks, start a signed-distance grid from its distance
transform, then fit SDF and colour grids to the views by volume rendering, coarse to fine. Losses: robust
(Charbonnier) photometric error against the views composited on a random background (so the background colour
cannot be explained by geometry), binary cross-entropy of the rendered opacity against the masks, and eikonal and
Laplacian terms that keep the SDF a smooth distance (the generated views are never perfectly consistent, and six
views under-constrain the surface; smoothness is the prior that fills the gaps). The colour grid holds albedo lit
through the SDF's normals by one learnt light (``shading``), so shading ties colour to geometry; volume and
surface-area priors, fading out over the fit, empty hull wedges that no view rules out. When the views carry normal
maps (the normal ControlNet's), a term pulls each ray's rendered normal towards its pixel's. The surface may not leave
the hull: the masks bound it, and this forbids floaters in space no ray ever checks. On CUDA each step runs as
one CUDA graph (:mod:`recon.graph_steps`), so the step must stay free of host synchronisation. For generated
views that disagree, the fit registers each view's pixels onto the fields (on by default, from 30 % of the way
through the fit, with fields that may also bend once they show the views disagree) and can also learn per view a
camera correction and a colour transform (:mod:`recon.view_refinement`) and carve its hull from grown masks
(``configs/robust.yaml``).

Everything is seeded, so the same views and config give the same fields.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from recon.config import ReconConfig
from recon.devices import fit_device, requested_fit_device
from recon.errors import InputError
from recon.graph_steps import ScheduledAdam, StepSchedule, run_steps
from recon.losses import LossWeights, fit_loss
from recon.posed_views import PosedViews
from recon.sdf_grid import Box, SdfGrid, initial_colour, initial_light, sample_grid
from recon.view_refinement import ColourCompensation, PoseRefinement, ViewWarp
from recon.visual_hull import Hull
from recon.volume_render import RayBatch, clip_to_hull, pixel_rays, render_rays


@dataclass
class Fields:
    """The fitted fields, on the CPU, ready to be meshed and textured."""

    grid: SdfGrid
    """Signed-distance and colour grids."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step of :func:`fit_fields`."""
    losses: dict[str, float] = field(default_factory=dict)
    """Final value of each loss term."""
    device: str = "cpu"
    """Device the fields were fitted on (where :func:`recon.reconstruct.reconstruct` also bakes)."""
    cam_to_world: np.ndarray | None = None
    """(N, 4, 4) the views' cameras as the fit corrected them (``camera_refinement``), else None."""
    colour_transforms: np.ndarray | None = None
    """(N, 3, 4) each view's learnt colour transform, ``A - I`` and ``b`` (``colour_compensation``), else None."""
    view_warps: np.ndarray | None = None
    """(N, c, c, 2) each view's learnt displacement field in units of its side (``registration``), else None."""
    registration_rms: float | None = None
    """Root-mean-square displacement of those fields at their nodes, pixels of the fitted image (the joint move
    excluded): how far the views disagreed. None without registration."""

    def registration_summary(self) -> dict[str, float | int]:
        """How far the views disagreed, for ``run.json``: ``disagreement_px`` (:attr:`registration_rms`) and
        ``nodes`` along a side of the fields (more than ``recon.registration_cells`` when they bent); empty without
        registration."""
        if self.view_warps is None or self.registration_rms is None:
            return {}
        return {"disagreement_px": round(self.registration_rms, 3), "nodes": int(self.view_warps.shape[1])}

    def registration_sentence(self) -> str | None:
        """:meth:`registration_summary` for a person to read; None without registration."""
        summary = self.registration_summary()
        if not summary:
            return None
        return f"the views disagreed by {self.registration_rms:.2f} px (fields of {summary['nodes']} nodes a side)"


def check_views(views: PosedViews) -> None:
    """Refuse views that cannot give a mesh, with one sentence each."""
    if len(views) < 2:
        raise InputError(
            f"Reconstruction needs at least 2 posed views, got {len(views)}; pass all six Zero123++ views."
        )
    covered = (views.masks > 0.5).reshape(len(views), -1).mean(1)
    if (covered < 1e-4).any():
        empty = int(np.argmax(covered < 1e-4))
        raise InputError(
            f"View {empty} has an empty object mask, so there is nothing to reconstruct; check the views' background."
        )
    if (covered > 0.98).any():
        full = int(np.argmax(covered > 0.98))
        raise InputError(
            f"View {full}'s mask covers the whole image, so the object cannot be told from its background; "
            "give views with a plain background or an alpha channel."
        )


@torch.enable_grad()
def fit_fields(
    views: PosedViews,
    recon: ReconConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    seed: int = 0,
    meanwhile: Callable[[], object] | None = None,
) -> Fields:
    """Fit SDF and colour grids to posed views (the GPU half of :func:`reconstruct`).

    ``seed`` drives ray sampling and background colours: the same views, config and seed give the same fields.
    ``device`` "auto" defers to ``recon.device``. ``meanwhile``: host work (a one-shot command's imports of what
    follows the fit) run in a daemon thread once the first stage's steps replay as a CUDA graph: the host then only
    waits for the device, without holding Python's lock. Not run at all without a graph (on the CPU the steps are
    Python's own work, and a thread beside them slows them more than it saves); it must not touch CUDA, since a
    later stage's graph capture forbids other threads' CUDA calls.
    """
    recon = recon or ReconConfig()
    if len(recon.resolutions) != len(recon.iterations) or not recon.resolutions:
        raise InputError("recon.resolutions and recon.iterations must be lists of the same, non-zero length.")
    check_views(views)
    dev = fit_device(requested_fit_device(device, recon.device))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    generator = torch.Generator(device=dev).manual_seed(seed)

    hull = Hull.carve(views, recon.bound, recon.hull_resolution, recon.hull_min_views, dev, recon.hull_dilation)
    if not hull.occupied.any():
        raise InputError("The views' masks share no common volume, so their cameras do not match; check --poses.")
    box = hull.box()
    normals = views.normals is not None and recon.normal_weight > 0
    rays = pixel_rays(views, recon.image_size, dev, normals=normals, pixels=recon.registration)
    corrections = ViewCorrections.for_views(views, recon, rays)  # every pixel's targets, before the hull drops rays
    rays = clip_to_hull(rays, hull.allowed, hull.cube, recon.hull_resolution, 2 * hull.voxel)
    timings["hull"] = time.perf_counter() - start

    total = sum(recon.iterations)
    longest = float((box.hi - box.lo).max())
    sharpness = (
        recon.sharpness[0] * (recon.resolutions[0] - 1) / longest,
        recon.sharpness[1] * (recon.resolutions[-1] - 1) / longest,
    )
    bar = _progress(total, progress)
    grid = initial_grid(views, hull, box, recon.resolutions[0], recon.colour_resolution, recon.shading)
    with torch.no_grad():
        # Volume and area are shares of the hull's, so their weights do not depend on the object's size.
        weights = LossWeights(
            mask=recon.mask_weight,
            eikonal=recon.eikonal_weight,
            colour_smoothness=recon.colour_smoothness_weight,
            volume=recon.volume_weight / hull.volume,
            area=recon.area_weight / float(grid.surface_area()),
            normal=recon.normal_weight if normals else 0.0,
        )
    done = 0
    losses: dict[str, float] = {}
    for stage, (resolution, iterations) in enumerate(zip(recon.resolutions, recon.iterations, strict=True)):
        stage_start = time.perf_counter()
        if stage > 0:
            grid = grid.resample(resolution, min(resolution, recon.colour_resolution))
        schedule = stage_schedule(
            len(rays), min(recon.rays, len(rays)), iterations, done, total, recon, stage, sharpness, generator
        )
        groups = [(grid.sdf, schedule.values["sdf_lr"]), (grid.colour, schedule.values["colour_lr"])]
        if grid.light is not None:
            groups.append((grid.light, schedule.values["light_lr"]))
        learn_cameras = recon.camera_stages == 0 or stage < recon.camera_stages
        groups += corrections.parameter_groups(schedule, learn_cameras)
        optimiser = ScheduledAdam(groups, betas=(0.9, 0.99))
        step = FitStep(
            grid, rays, schedule, optimiser, weights, recon, 4 * grid.voxel, normals, corrections, learn_cameras
        )
        on_replay = _in_thread(meanwhile) if stage == 0 and meanwhile is not None else None
        run_steps(step, iterations, dev, recon.cuda_graphs, lambda: bar.update(1), on_replay)
        done += iterations
        losses = {name: value.item() for name, value in step.terms.items()}
        bar.set_postfix(stage=stage, **{k: f"{v:.4f}" for k, v in losses.items()})
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings[f"fit_{resolution}"] = time.perf_counter() - stage_start
    bar.close()
    clamp_to_hull(grid, hull)
    light = None if grid.light is None else grid.light.detach().cpu()
    cpu_grid = SdfGrid(grid.sdf.detach().cpu(), grid.colour.detach().cpu(), box.to(torch.device("cpu")), light)
    cpu_grid.requires_grad_(False)
    timings["fit"] = time.perf_counter() - start
    rms = None if corrections.warps is None else corrections.warps.rms()
    return Fields(cpu_grid, timings, losses, str(dev), *corrections.learnt(views), registration_rms=rms)


class FitStep:
    """One optimisation step, read entirely from device tensors indexed by the schedule's counter, so that it can
    be captured once as a CUDA graph (:mod:`recon.graph_steps`); :attr:`terms` holds the last step's loss terms."""

    def __init__(
        self,
        grid: SdfGrid,
        rays: RayBatch,
        schedule: StepSchedule,
        optimiser: ScheduledAdam,
        weights: LossWeights,
        recon: ReconConfig,
        band: float,
        normals: bool,
        corrections: ViewCorrections,
        learn_cameras: bool = True,
    ):
        self.grid, self.rays, self.schedule, self.optimiser = grid, rays, schedule, optimiser
        self.weights, self.recon, self.band, self.normals = weights, recon, band, normals
        self.corrections, self.learn_cameras = corrections, learn_cameras
        self.terms: dict[str, torch.Tensor] = {}

    def __call__(self) -> None:
        now = self.schedule.now()
        batch = self.rays[now["index"]]
        cameras, colours, warps = self.corrections.cameras, self.corrections.colours, self.corrections.warps
        if warps is not None:
            if warps.bend is not None:
                warps.decide(now["bend_decide"])
            batch = warps.apply(batch)
        if cameras is not None:
            # Held fixed, the corrections send no gradient through the samples' positions (the costly part).
            batch = cameras.apply(batch, learn=self.learn_cameras)
        gradient = self.grid.gradient()  # once per step: shading, eikonal/Laplacian and area all read it
        out = render_rays(
            self.grid,
            batch,
            self.recon.samples,
            now["inv_s"],
            now["background"],
            now["jitter"],
            self.recon.colour_per_sample,
            gradient,
            self.normals,
        )
        if colours is not None:
            out = colours.apply(out, batch.view, now["background"])
        loss, terms = fit_loss(
            self.grid,
            out,
            batch,
            now["background"],
            gradient,
            self.band,
            self.weights,
            now["smoothness_weight"],
            now["prior_weight"],
        )
        if cameras is not None and self.learn_cameras:
            terms["camera"] = cameras.penalty()
            loss = loss + self.recon.camera_weight * terms["camera"]
        if warps is not None:
            terms["registration"] = warps.penalty()
            loss = loss + self.recon.registration_weight * terms["registration"]
        if colours is not None:
            terms["colour_transform"] = colours.penalty()
            loss = loss + self.recon.colour_compensation_weight * terms["colour_transform"]
        self.optimiser.step(loss, self.schedule.counter)
        self.schedule.advance()
        # Detached: a loss tensor kept alive would keep this step's autograd graph (and its gradient accumulators,
        # bound to the warm-up stream) alive into the CUDA graph capture, which then fails.
        self.terms = {name: value.detach() for name, value in terms.items()}


@dataclass
class ViewCorrections:
    """The per-view corrections a fit learns (:mod:`recon.view_refinement`), each None when switched off."""

    cameras: PoseRefinement | None
    colours: ColourCompensation | None
    warps: ViewWarp | None

    @classmethod
    def for_views(cls, views: PosedViews, recon: ReconConfig, rays: RayBatch) -> ViewCorrections:
        """The corrections ``recon`` asks for, on the device of ``rays`` (:func:`pixel_rays` of every pixel)."""
        device = rays.origins.device
        cameras = None
        if recon.camera_refinement:
            focal = float(views.intrinsics[0, 0, 0]) * recon.image_size / views.size[1]
            cameras = PoseRefinement(torch.as_tensor(views.cam_to_world, dtype=torch.float32, device=device), focal)
        colours = ColourCompensation(len(views), device) if recon.colour_compensation else None
        warps = None
        if recon.registration:
            warps = ViewWarp.for_rays(
                rays,
                views,
                recon.registration_cells,
                recon.registration_blur,
                recon.registration_penalty,
                recon.registration_bend_cells,
                recon.registration_bend_above,
            )
        return cls(cameras, colours, warps)

    def parameter_groups(
        self, schedule: StepSchedule, cameras: bool = True
    ) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """The corrections' parameters with their learning-rate rows (the cameras' only if ``cameras``)."""
        groups = []
        if self.cameras is not None and cameras:
            groups.append((self.cameras.offset, schedule.values["camera_lr"]))
        if self.colours is not None:
            groups.append((self.colours.affine, schedule.values["colour_transform_lr"]))
        if self.warps is not None:
            groups.append((self.warps.offset, schedule.values["registration_lr"]))
            if self.warps.bend is not None:
                groups.append((self.warps.bend, schedule.values["registration_lr"]))
        return groups

    def learnt(self, views: PosedViews) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The corrected cameras (N, 4, 4), colour transforms (N, 3, 4) and displacement fields for :class:`Fields`."""
        cam_to_world = None if self.cameras is None else self.cameras.cam_to_world(views.cam_to_world)
        colours = None if self.colours is None else self.colours.affine.detach().cpu().numpy()
        warps = None if self.warps is None else self.warps.fields()
        return cam_to_world, colours, warps


def initial_grid(
    views: PosedViews, hull: Hull, box: Box, resolution: int, colour_resolution: int, shading: str
) -> SdfGrid:
    """The first stage's grids: the hull's signed distance, and the views' mean colour where each point projects."""
    dev = hull.occupied.device
    points = box.grid_points(box.shape(resolution))
    sdf = sample_grid(hull.signed_distance(), hull.cube, points)[..., 0]
    colour_points = box.grid_points(box.shape(min(resolution, colour_resolution)))
    colour = initial_colour(views, colour_points.reshape(-1, 3), dev)
    colour = colour.T.reshape(3, *colour_points.shape[:3])
    return SdfGrid(sdf, colour, box, initial_light(dev) if shading == "lambertian" else None)


def clamp_to_hull(grid: SdfGrid, hull: Hull) -> None:
    """Make the SDF positive outside the (dilated) hull: the masks bound the object, and this removes floaters that
    no ray constrains."""
    with torch.no_grad():
        points = grid.box.grid_points(tuple(grid.sdf.shape[-3:]))
        outside = sample_grid(hull.allowed, hull.cube, points)[..., 0] < 0.5
        grid.sdf[0, 0][outside] = grid.sdf[0, 0][outside].clamp_min(grid.voxel)


def stage_schedule(
    ray_count: int,
    rays: int,
    steps: int,
    done: int,
    total: int,
    recon: ReconConfig,
    stage: int,
    sharpness: tuple[float, float],
    generator: torch.Generator,
) -> StepSchedule:
    """Everything that varies from step to step of one stage, drawn and computed up front on the device.

    Drawing all random numbers before the stage (rather than per step) keeps the step free of host work. Rows:
    ``index`` (rays,) training rays; ``background`` (rays, 3) colours the targets are composited on; ``jitter``
    (rays, 1) stratified-sampling offsets; ``inv_s`` NeuS sharpness, geometric from the start of ``sharpness`` to
    its end over all stages; ``smoothness_weight`` and the SDF, colour and light learning rates, falling to a tenth
    over the stage; ``prior_weight``, the volume and area factor, falling from 1 to 0 over all stages;
    ``camera_lr`` and ``registration_lr``, 0 during their warm-ups, and ``colour_transform_lr``, all three falling to
    a tenth over all stages; ``bend_decide``, 1 at the step where the registration decides on its bend, else 0.
    """
    dev = generator.device
    index = torch.randint(ray_count, (steps, rays), device=dev, generator=generator)
    background = torch.rand(steps, rays, 3, device=dev, generator=generator)
    jitter = torch.rand(steps, rays, 1, device=dev, generator=generator)
    it = torch.arange(steps, device=dev, dtype=torch.float64)
    decay = 0.1 ** (it / max(1, steps - 1))
    s_start, s_end = sharpness
    inv_s = s_start * (s_end / s_start) ** ((done + it) / max(1, total - 1))
    lr = recon.learning_rate * 0.5**stage
    progress = (done + it) / max(1, total - 1)
    step = done + it
    cameras_unlocked = (step >= recon.camera_warmup * total).double()
    fields_unlocked = (step >= recon.registration_warmup * total).double()
    bend_decide = (step == round((recon.registration_warmup + recon.registration_bend_delay) * total)).float()
    return StepSchedule(
        {
            "index": index,
            "background": background,
            "jitter": jitter,
            "inv_s": inv_s.float(),
            "smoothness_weight": (recon.smoothness_weight * decay).float(),
            "sdf_lr": (lr * decay).float(),
            "colour_lr": (recon.colour_learning_rate * decay).float(),
            "light_lr": (recon.light_learning_rate * decay).float(),
            "prior_weight": (1 - (done + it) / max(1, total - 1)).float(),
            "camera_lr": (recon.camera_learning_rate * cameras_unlocked * 0.1**progress).float(),
            "colour_transform_lr": (recon.colour_compensation_learning_rate * 0.1**progress).float(),
            "registration_lr": (recon.registration_learning_rate * fields_unlocked * 0.1**progress).float(),
            "bend_decide": bend_decide,
        }
    )


def _in_thread(work: Callable[[], object]) -> Callable[[], None]:
    """A function that starts ``work`` in a daemon thread."""

    def quietly() -> None:
        # Errors are the caller's to meet: its own import of the same modules afterwards raises them again.
        with contextlib.suppress(Exception):
            work()

    return lambda: threading.Thread(target=quietly, daemon=True).start()


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fitting fields", unit="step", disable=not enabled, leave=False)
