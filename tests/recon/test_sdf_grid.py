"""The SDF grid's geometric read-outs on a sphere, whose answers are known: normals, shading, volume, surface area."""

from __future__ import annotations

import math

import torch

from recon.sdf_grid import Box, SdfGrid, initial_light, shade

RADIUS = 0.6


def sphere_grid(resolution: int = 48, light: torch.Tensor | None = None) -> SdfGrid:
    box = Box(torch.full((3,), -1.0), torch.full((3,), 1.0))
    points = box.grid_points(box.shape(resolution))
    sdf = points.norm(dim=-1) - RADIUS
    colour = torch.zeros(3, *sdf.shape)  # logit 0: albedo 0.5 everywhere
    return SdfGrid(sdf, colour, box, light)


def test_normals_are_the_radial_direction_on_a_sphere():
    grid = sphere_grid()
    directions = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    normals = grid.normals(directions * RADIUS)
    assert (normals * directions).sum(-1).min() > 0.995


def test_lambertian_colour_is_albedo_facing_the_light_and_ambient_share_facing_away():
    light = torch.tensor([0.0, 0.0, 2.0, math.log(0.3 / 0.7)])  # straight up (any length), ambient share 0.3
    grid = sphere_grid(light=light)
    top, side, bottom = torch.tensor([[0.0, 0.0, RADIUS], [RADIUS, 0.0, 0.0], [0.0, 0.0, -RADIUS]])
    rgb = grid.rgb(torch.stack([top, side, bottom]))
    assert torch.allclose(rgb[0], torch.full((3,), 0.5), atol=5e-3)  # facing the light: the albedo itself
    assert torch.allclose(rgb[1:], torch.full((2, 3), 0.5 * 0.3), atol=5e-3)  # edge-on or away: ambient only
    unshaded = sphere_grid()  # without a light the colour grid is the colour
    assert torch.allclose(unshaded.rgb(bottom[None]), torch.full((1, 3), 0.5))
    # the starting light is overhead with an even ambient share
    assert torch.allclose(
        shade(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), initial_light(torch.device("cpu"))),
        torch.tensor([1.0, 0.5]),
    )


def test_volume_and_area_of_a_sphere_and_their_gradients_pull_the_surface_in():
    grid = sphere_grid(64)
    volume, area = grid.volume().detach(), grid.surface_area().detach()
    assert abs(float(volume) / (4 / 3 * math.pi * RADIUS**3) - 1) < 0.03
    assert abs(float(area) / (4 * math.pi * RADIUS**2) - 1) < 0.03
    # both penalties raise the SDF at the surface (moving it inwards): the pressure and the minimal-surface prior
    for penalty in (grid.volume(), grid.surface_area()):
        (gradient,) = torch.autograd.grad(penalty, grid.sdf)
        near = grid.sdf.detach().abs() < grid.voxel / 2
        assert (gradient[near] < 0).float().mean() > 0.99
