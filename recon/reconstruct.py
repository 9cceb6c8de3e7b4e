"""Posed views → signed-distance and colour fields → textured mesh: the reconstruction entry point.

Two halves, so that a batch runner can keep the GPU busy on the next object while the CPU finishes this one:

- :func:`fit_fields` (GPU-bound): carve the visual hull of the masks, start a signed-distance grid from its distance
  transform, then fit SDF and colour grids to the views by volume rendering, coarse to fine. Losses: robust
  (Charbonnier) photometric error against the views composited on a random background (so the background colour
  cannot be explained by geometry), binary cross-entropy of the rendered opacity against the masks, and eikonal and
  Laplacian terms that keep the SDF a smooth distance (the generated views are never perfectly consistent, and six
  views under-constrain the surface; smoothness is the prior that fills the gaps). The colour grid holds albedo lit
  through the SDF's normals by one learnt light (``shading``), so shading ties colour to geometry; volume and
  surface-area priors, fading out over the fit, empty hull wedges that no view rules out. When the views carry normal
  maps (the normal ControlNet's), a term pulls each ray's rendered normal towards its pixel's. The surface may not leave
  the hull: the masks bound it, and this forbids floaters in space no ray ever checks. On CUDA each step runs as
  one CUDA graph (:mod:`recon.graph_steps`), so the step must stay free of host synchronisation.
- :func:`finish_mesh` (CPU-friendly): marching cubes, clean-up and decimation (:mod:`recon.meshing`), then UV unwrap
  and a texture baked from the views, with the colour field filling what no view sees (:mod:`recon.texture`).

Everything is seeded, so the same views and config give the same mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from recon.config import ReconConfig
from recon.devices import fit_device, resolve_device
from recon.errors import InputError
from recon.graph_steps import run_steps
from recon.meshing import MeshConfig, extract_mesh
from recon.posed_views import PosedViews
from recon.sdf_grid import (
    Box,
    SdfGrid,
    carve_hull,
    hull_box,
    initial_colour,
    initial_light,
    occupancy_to_sdf,
    sample_grid,
)
from recon.texture import TextureConfig, bake_texture
from recon.volume_render import clip_to_hull, pixel_rays, render_rays


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
    """Device the fields were fitted on (where :func:`reconstruct` also bakes)."""


@dataclass
class ReconResult:
    """A reconstructed, textured mesh and where the time went."""

    mesh: trimesh.Trimesh
    """World z-up, UV-textured (PBR base colour)."""
    timings: dict[str, float]
    """Seconds per stage."""


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


def fit_fields(
    views: PosedViews,
    recon: ReconConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    seed: int = 0,
) -> Fields:
    """Fit SDF and colour grids to posed views (the GPU half of :func:`reconstruct`).

    ``seed`` drives ray sampling and background colours: the same views, config and seed give the same fields.
    ``device`` "auto" defers to ``recon.device``.
    """
    recon = recon or ReconConfig()
    if len(recon.resolutions) != len(recon.iterations) or not recon.resolutions:
        raise InputError("recon.resolutions and recon.iterations must be lists of the same, non-zero length.")
    check_views(views)
    dev = fit_device(resolve_device(device if device != "auto" else recon.device))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    generator = torch.Generator(device=dev).manual_seed(seed)

    occupied = carve_hull(views, recon.bound, recon.hull_resolution, recon.hull_min_views, dev)
    if not occupied.any():
        raise InputError("The views' masks share no common volume, so their cameras do not match; check --poses.")
    cube = Box(torch.full((3,), -recon.bound, device=dev), torch.full((3,), recon.bound, device=dev))
    cube_voxel = 2 * recon.bound / (recon.hull_resolution - 1)
    hull_sdf = occupancy_to_sdf(occupied, cube_voxel)[None, None]
    # Dilated by two voxels: the surface may move a little outside a hull carved from area-resampled masks.
    allowed = F.max_pool3d(occupied.float()[None, None], kernel_size=5, stride=1, padding=2)
    box = hull_box(occupied, recon.bound, margin=3 * cube_voxel)
    normals = views.normals is not None and recon.normal_weight > 0
    rays = pixel_rays(views, recon.image_size, dev, normals=normals)
    rays = clip_to_hull(rays, allowed, cube, recon.hull_resolution, 2 * cube_voxel)
    # The volume term is a share of the hull's volume, so its weight does not depend on the object's size.
    volume_weight = recon.volume_weight / (float(occupied.sum()) * cube_voxel**3)
    timings["hull"] = time.perf_counter() - start

    grid: SdfGrid | None = None
    area_weight = 0.0
    total = sum(recon.iterations)
    longest = float((box.hi - box.lo).max())
    s_start = recon.sharpness[0] * (recon.resolutions[0] - 1) / longest
    s_end = recon.sharpness[1] * (recon.resolutions[-1] - 1) / longest
    bar = _progress(total, progress)
    done = 0
    losses: dict[str, float] = {}
    terms: dict[str, torch.Tensor] = {}  # the last step's loss terms (device tensors, read after each stage)
    for stage, (resolution, iterations) in enumerate(zip(recon.resolutions, recon.iterations, strict=True)):
        stage_start = time.perf_counter()
        colour_res = min(resolution, recon.colour_resolution)
        if grid is None:
            points = box.grid_points(box.shape(resolution))
            sdf = sample_grid(hull_sdf, cube, points)[..., 0]
            colour_points = box.grid_points(box.shape(colour_res))
            colour = initial_colour(views, colour_points.reshape(-1, 3), dev)
            colour = colour.T.reshape(3, *colour_points.shape[:3])
            grid = SdfGrid(sdf, colour, box, initial_light(dev) if recon.shading == "lambertian" else None)
            with torch.no_grad():
                area_weight = recon.area_weight / float(grid.surface_area())
        else:
            grid = grid.resample(resolution, colour_res)
        band = 4 * grid.voxel
        schedule = _StageSchedule.draw(
            len(rays), min(recon.rays, len(rays)), iterations, done, total, recon, stage, (s_start, s_end), generator
        )
        groups = [(grid.sdf, schedule.sdf_lr), (grid.colour, schedule.colour_lr)]
        if grid.light is not None:
            groups.append((grid.light, schedule.light_lr))
        optimiser = torch.optim.Adam(
            [{"params": [param], "lr": lrs[0].clone()} for param, lrs in groups],
            betas=(0.9, 0.99),
            fused=True,
            capturable=dev.type == "cuda",
        )

        def step(
            grid: SdfGrid = grid,
            schedule: _StageSchedule = schedule,
            optimiser=optimiser,
            band=band,
            groups=groups,
            area_weight=area_weight,
        ) -> None:
            # One optimisation step, read entirely from device tensors indexed by the step counter (graph-capturable).
            i = schedule.counter
            batch = rays[schedule.index.index_select(0, i)[0]]
            background = schedule.background.index_select(0, i)[0]
            jitter = schedule.jitter.index_select(0, i)[0]
            inv_s = schedule.inv_s.index_select(0, i)[0]
            gradient = grid.gradient()  # once per step: shading, eikonal/Laplacian and area all read it
            out = render_rays(
                grid, batch, recon.samples, inv_s, background, jitter, recon.colour_per_sample, gradient, normals
            )
            target = batch.rgb * batch.mask[:, None] + background * (1 - batch.mask[:, None])
            photometric = torch.sqrt((out.rgb - target) ** 2 + 1e-6).mean()
            opacity = out.opacity.clamp(1e-4, 1 - 1e-4)
            mask = F.binary_cross_entropy(opacity, batch.mask)
            eikonal, smooth = grid.eikonal_and_smoothness(band, gradient)
            loss = (
                photometric
                + recon.mask_weight * mask
                + recon.eikonal_weight * eikonal
                + schedule.smoothness_weight.index_select(0, i)[0] * smooth
                + recon.colour_smoothness_weight * grid.colour_tv()
                + schedule.prior_weight.index_select(0, i)[0]
                * (volume_weight * grid.volume() + area_weight * grid.surface_area(gradient))
            )
            if normals:
                normal = _normal_error(out.normal, batch.normal)
                loss = loss + recon.normal_weight * normal
                terms["normal"] = normal.detach()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for group, (_, lrs) in zip(optimiser.param_groups, groups, strict=True):
                group["lr"].copy_(lrs.index_select(0, i)[0])
            optimiser.step()
            schedule.counter.add_(1)
            # Detached: a loss tensor kept alive would keep this step's autograd graph (and its gradient
            # accumulators, bound to the warm-up stream) alive into the CUDA graph capture, which then fails.
            terms.update(
                photometric=photometric.detach(),
                mask=mask.detach(),
                eikonal=eikonal.detach(),
                smoothness=smooth.detach(),
            )

        run_steps(step, iterations, dev, recon.cuda_graphs, lambda: bar.update(1))
        done += iterations
        losses = {name: value.item() for name, value in terms.items()}
        bar.set_postfix(stage=stage, **{k: f"{v:.4f}" for k, v in losses.items()})
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings[f"fit_{resolution}"] = time.perf_counter() - stage_start
    bar.close()
    assert grid is not None
    with torch.no_grad():
        # The masks bound the object: outside the (dilated) hull the SDF is made positive, which removes floaters
        # that no ray constrains.
        points = box.grid_points(tuple(grid.sdf.shape[-3:]))
        outside = sample_grid(allowed, cube, points)[..., 0] < 0.5
        grid.sdf[0, 0][outside] = grid.sdf[0, 0][outside].clamp_min(grid.voxel)
    light = None if grid.light is None else grid.light.detach().cpu()
    cpu_grid = SdfGrid(grid.sdf.detach().cpu(), grid.colour.detach().cpu(), box.to(torch.device("cpu")), light)
    cpu_grid.requires_grad_(False)
    timings["fit"] = time.perf_counter() - start
    return Fields(cpu_grid, timings, losses, str(dev))


def finish_mesh(
    fields: Fields,
    views: PosedViews,
    mesh: MeshConfig | None = None,
    texture: TextureConfig | None = None,
    timings: dict[str, float] | None = None,
    device: str | torch.device = "cpu",
) -> trimesh.Trimesh:
    """Mesh, clean, decimate, unwrap and texture the fitted fields (the CPU half of :func:`reconstruct`).

    ``device`` runs the texel rasterisation and view projection (CPU by default, so a batch runner can overlap it
    with the next object's fitting; on a single job the fitting device is faster). Stage seconds go into ``timings``.
    """
    mesh = mesh or MeshConfig()
    texture = texture or TextureConfig()
    timings = {} if timings is None else timings
    start = time.perf_counter()
    grid = fields.grid
    sdf_xyz = grid.sdf.detach()[0, 0].permute(2, 1, 0).numpy()
    surface = extract_mesh(sdf_xyz, grid.box.lo.numpy(), grid.box.hi.numpy(), mesh)
    timings["mesh"] = time.perf_counter() - start

    def colour_field(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return grid.rgb(torch.as_tensor(points, dtype=torch.float32)).numpy()

    textured = bake_texture(surface, views, colour_field, texture, device=device, timings=timings)
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


@dataclass
class _StageSchedule:
    """Everything that varies from step to step of one stage, drawn and computed up front on the device.

    Drawing all random numbers before the stage (rather than per step) keeps the step free of host work, so it can be
    captured once as a CUDA graph (recon.graph_steps); the step reads row ``counter`` of each tensor.
    """

    index: torch.Tensor
    """(steps, rays) indices of each step's training rays."""
    background: torch.Tensor
    """(steps, rays, 3) random background colours the targets are composited on."""
    jitter: torch.Tensor
    """(steps, rays, 1) stratified-sampling offsets."""
    inv_s: torch.Tensor
    """(steps,) NeuS sharpness, geometric from the config's start to its end over all stages."""
    smoothness_weight: torch.Tensor
    """(steps,) Laplacian weight, falling to a tenth over the stage."""
    sdf_lr: torch.Tensor
    """(steps,) Adam step of the SDF grid, falling to a tenth over the stage."""
    colour_lr: torch.Tensor
    """(steps,) Adam step of the colour grid, falling to a tenth over the stage."""
    light_lr: torch.Tensor
    """(steps,) Adam step of the light (shaded colour), falling to a tenth over the stage."""
    prior_weight: torch.Tensor
    """(steps,) factor of the volume and area priors, falling from 1 to 0 over all stages."""
    counter: torch.Tensor
    """(1,) long: the step about to run."""

    @classmethod
    def draw(
        cls,
        ray_count: int,
        rays: int,
        steps: int,
        done: int,
        total: int,
        recon: ReconConfig,
        stage: int,
        sharpness: tuple[float, float],
        generator: torch.Generator,
    ) -> _StageSchedule:
        dev = generator.device
        index = torch.randint(ray_count, (steps, rays), device=dev, generator=generator)
        background = torch.rand(steps, rays, 3, device=dev, generator=generator)
        jitter = torch.rand(steps, rays, 1, device=dev, generator=generator)
        it = torch.arange(steps, device=dev, dtype=torch.float64)
        decay = 0.1 ** (it / max(1, steps - 1))
        s_start, s_end = sharpness
        inv_s = s_start * (s_end / s_start) ** ((done + it) / max(1, total - 1))
        lr = recon.learning_rate * 0.5**stage
        return cls(
            index,
            background,
            jitter,
            inv_s.float(),
            (recon.smoothness_weight * decay).float(),
            (lr * decay).float(),
            (recon.colour_learning_rate * decay).float(),
            (recon.light_learning_rate * decay).float(),
            (1 - (done + it) / max(1, total - 1)).float(),
            torch.zeros(1, dtype=torch.long, device=dev),
        )


def _normal_error(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 − cos`` between rendered (R, 3) and target (R, 3) normals, each ray weighted by its target's length
    (the pixel's share of normal map: 0 on the background, so those rays do not count)."""
    share = target.norm(dim=-1)
    agreement = (F.normalize(rendered, dim=-1, eps=1e-6) * target).sum(-1)
    return (share - agreement).sum() / share.sum().clamp_min(1.0)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fitting fields", unit="step", disable=not enabled, leave=False)
