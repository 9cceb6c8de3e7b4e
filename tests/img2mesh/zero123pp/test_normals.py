"""The normal ControlNet path (tiny random ControlNet) and the matting post-process (synthetic normal maps)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from img2mesh.zero123pp.normals import generate_normal_grid, load_normal_controlnet, matte_from_normals


@pytest.fixture(scope="module")
def controlnet(tiny_zero123pp):
    return load_normal_controlnet(tiny_zero123pp / "normal_controlnet")


def seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def test_the_controlnet_steers_the_main_pass_from_the_control_grid(tiny_pipe, controlnet, photo):
    grids = [PIL.Image.new("RGB", (640, 960), c) for c in ((200, 40, 40), (40, 40, 200))]
    calls = []
    hook = controlnet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape), with_kwargs=True)
    try:
        normals = [
            generate_normal_grid(tiny_pipe, controlnet, photo, g, num_inference_steps=1, generator=seeded(0))
            for g in grids
        ]
    finally:
        hook.remove()
    plain = tiny_pipe(photo, num_inference_steps=1, generator=seeded(0)).images[0]
    assert normals[0].size == (640, 960) and normals[0].mode == "RGB"
    # One ControlNet evaluation per step, on the guided main-pass batch (the reference pass gets no residuals).
    assert calls == [torch.Size([2, 4, 120, 80])] * 2
    assert not np.array_equal(np.asarray(normals[0]), np.asarray(plain))
    assert not np.array_equal(np.asarray(normals[0]), np.asarray(normals[1]))


def test_a_control_grid_of_the_wrong_size_is_refused(tiny_pipe, controlnet, photo):
    from img2mesh.errors import InputError

    with pytest.raises(InputError, match="960"):
        generate_normal_grid(tiny_pipe, controlnet, photo, PIL.Image.new("RGB", (320, 320)), num_inference_steps=1)


def synthetic_grids() -> tuple[PIL.Image.Image, PIL.Image.Image, np.ndarray]:
    """A colour grid and its normal grid: a sphere in every 320x320 tile on the gray background; the inside mask."""
    yy, xx = np.mgrid[:320, :320]
    x, y = (xx + 0.5 - 160) / 100, (160 - yy - 0.5) / 100
    inside = x**2 + y**2 < 1
    z = np.sqrt(np.clip(1 - x**2 - y**2, 0, 1))
    tile_normals = np.where(inside[..., None], np.stack([x, y, z], -1) * 0.5 + 0.5, 127 / 255)
    tile_color = np.where(inside[..., None], np.array([0.8, 0.3, 0.1]), 127 / 255)
    normal_grid = np.tile(tile_normals, (3, 2, 1))
    color_grid = np.tile(tile_color, (3, 2, 1))
    to_image = lambda a: PIL.Image.fromarray(np.round(a * 255).astype(np.uint8))  # noqa: E731
    return to_image(color_grid), to_image(normal_grid), inside


def test_mattes_and_normals_from_a_normal_grid():
    """The mattes and the matted normal grid, and the posed views made of them as the pipeline makes them (the
    mattes as masks, the normal grid split with the colour grid)."""
    from recon.posed_views import PosedViews

    color, normal, inside = synthetic_grids()
    views = matte_from_normals(color, normal)
    assert views.alpha.shape == (6, 320, 320) and views.normal_grid.size == (640, 960)
    core = inside & ~_edge(inside, 4)
    outside = ~inside & ~_edge(inside, 4)
    assert views.alpha[:, core].min() > 0.95 and views.alpha[:, outside].max() < 0.05
    assert abs(np.asarray(views.normal_grid)[5, 5] - 127).max() <= 1  # background: gray
    posed = PosedViews.from_grid(color, masks=views.alpha, normal_grid=views.normal_grid)
    assert posed.normals is not None and posed.normals.shape == (6, 320, 320, 3)
    np.testing.assert_allclose(np.linalg.norm(posed.normals[:, core], axis=-1), 1.0, atol=1e-4)
    assert posed.normals[0, 160, 160, 2] > 0.99  # the sphere faces the camera at its centre


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation, binary_erosion

    return binary_dilation(mask, iterations=width) & ~binary_erosion(mask, iterations=width)
