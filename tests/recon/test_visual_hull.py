"""The hull's signed distance on the GPU is SciPy's, bit for bit (checked through the same torch code on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from recon.config import ViewsConfig
from recon.dataset import read_views
from recon.visual_hull import Hull, occupancy_to_sdf, squared_distance_to_zeros, torch_occupancy_to_sdf

GRID = Path(__file__).resolve().parents[2] / "examples" / "spot_views.png"


@pytest.mark.parametrize("shape", [(24, 24, 24), (17, 30, 9), (13, 11), (40,)])
@pytest.mark.parametrize("density", [0.03, 0.5, 0.97])
def test_squared_distance_to_zeros_is_scipys_transform_squared(shape: tuple[int, ...], density: float) -> None:
    rng = np.random.default_rng(len(shape) * 100 + int(density * 100))
    mask = rng.random(shape) < density
    mask.flat[0] = False  # at least one zero: the transform is defined
    expected = ndimage.distance_transform_edt(mask)
    # Small chunks: lines split across chunks must give the same answer.
    got = squared_distance_to_zeros(torch.as_tensor(mask), chunk_elements=500)
    assert got.dtype == torch.int32
    assert np.array_equal(got.double().sqrt().numpy(), expected)


def test_the_hulls_signed_distance_in_torch_is_the_scipy_one_bit_for_bit() -> None:
    views = read_views(GRID, ViewsConfig())
    hull = Hull.carve(views, 1.0, 48, 5, torch.device("cpu"))
    assert 0 < int(hull.occupied.sum()) < hull.occupied.numel()
    expected = occupancy_to_sdf(hull.occupied, hull.voxel)  # on the CPU: SciPy's transform
    got = torch_occupancy_to_sdf(hull.occupied, hull.voxel)
    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)
    assert float(expected.min()) < 0 < float(expected.max())
