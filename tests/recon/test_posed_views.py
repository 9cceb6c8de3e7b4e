"""PosedViews from grids and folders, and their lossless save / load."""

import numpy as np
import pytest
from PIL import Image

from recon.cameras import zero123pp_cameras
from recon.dataset import read_views
from recon.errors import InputError
from recon.posed_views import PosedViews, ViewsConfig, split_grid

GRAY = 127


def tile_colours():
    """Six distinct colours, one per view, in grid (row-major) order."""
    return [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def make_grid(side=320, mode="RGB"):
    """A 3x2 grid whose tile i shows a disc of colour i on gray, so order and masks are both checkable."""
    grid = np.full((3 * side, 2 * side, 4), GRAY, dtype=np.uint8)
    grid[..., 3] = 0
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 4) ** 2
    for i, colour in enumerate(tile_colours()):
        r, c = divmod(i, 2)
        tile = grid[r * side : (r + 1) * side, c * side : (c + 1) * side]
        tile[disc, :3] = colour
        tile[disc, 3] = 255
    return Image.fromarray(grid if mode == "RGBA" else grid[..., :3], mode), disc


def test_split_grid_is_row_major():
    grid, _ = make_grid()
    tiles = split_grid(grid)
    assert len(tiles) == 6 and all(t.size == (320, 320) for t in tiles)
    for tile, colour in zip(tiles, tile_colours(), strict=True):
        assert tile.getpixel((160, 160)) == colour
        assert tile.getpixel((2, 2)) == (GRAY,) * 3
    as_arrays = split_grid(np.asarray(grid, dtype=np.float32))  # arrays split alike, keeping their dtype
    assert as_arrays.shape == (6, 320, 320, 3) and as_arrays.dtype == np.float32
    assert all(np.array_equal(a, np.asarray(t)) for a, t in zip(as_arrays, tiles, strict=True))


@pytest.mark.parametrize("size", [(960, 640), (640, 640), (641, 960), (320, 480 + 1)])
def test_split_grid_rejects_wrong_sizes_with_one_sentence(size):
    with pytest.raises(InputError) as error:
        split_grid(Image.new("RGB", size))
    message = str(error.value)
    assert f"{size[0]}x{size[1]}" in message and "640x960" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_from_grid_poses_and_computed_masks():
    grid, disc = make_grid()
    views = PosedViews.from_grid(grid)
    assert len(views) == 6 and views.size == (320, 320) and views.poses == "v1.2"
    k, c2w = zero123pp_cameras("v1.2", 4.0, 320)
    np.testing.assert_array_equal(views.intrinsics, k)
    np.testing.assert_array_equal(views.cam_to_world, c2w)
    assert views.images.dtype == np.float32 and views.masks.dtype == np.float32
    np.testing.assert_array_equal(views.images[0, 160, 160], np.float32([200, 30, 30]) / 255)
    for mask in views.masks:
        iou = ((mask > 0.5) & disc).sum() / ((mask > 0.5) | disc).sum()
        assert iou > 0.99


def test_from_grid_v11_and_radius_and_larger_grids():
    grid, _ = make_grid(side=640)
    views = PosedViews.from_grid(grid, ViewsConfig(poses="v1.1", radius=2.0))
    k, c2w = zero123pp_cameras("v1.1", 2.0, 640)
    assert views.size == (640, 640) and views.poses == "v1.1"
    np.testing.assert_array_equal(views.intrinsics, k)
    np.testing.assert_array_equal(views.cam_to_world, c2w)


def test_from_grid_takes_alpha_or_given_masks():
    grid, disc = make_grid(mode="RGBA")
    views = PosedViews.from_grid(grid)
    np.testing.assert_array_equal(views.masks, np.broadcast_to(disc, (6, 320, 320)).astype(np.float32))
    given = np.random.default_rng(0).random((6, 320, 320)).astype(np.float32)
    np.testing.assert_allclose(PosedViews.from_grid(grid, masks=given).masks, given, atol=0.5 / 65535 + 1e-7)


def test_normal_grid_gives_normals_and_masks():
    grid, disc = make_grid()
    side = 320
    yy, xx = (np.mgrid[:side, :side] + 0.5 - side / 2) / (side / 4)
    z = np.sqrt(np.clip(1 - xx**2 - yy**2, 0, 1))
    sphere = np.stack([xx, -yy, z], axis=-1) * disc[..., None]  # camera-space normals of a sphere, zero outside
    tile = np.round((sphere + 1) / 2 * 255).astype(np.uint8)
    normal_grid = Image.fromarray(np.tile(tile, (3, 2, 1)))
    views = PosedViews.from_grid(grid, normal_grid=normal_grid)
    assert views.normals is not None and views.normals.shape == (6, side, side, 3)
    inside = disc & (xx**2 + yy**2 < 0.8)
    np.testing.assert_allclose(np.linalg.norm(views.normals[0][inside], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(views.normals[0][inside], sphere[inside], atol=0.02)
    assert not views.normals[0][~disc].any()
    iou = ((views.masks[0] > 0.5) & disc).sum() / ((views.masks[0] > 0.5) | disc).sum()
    assert iou > 0.98


def write_views(folder, names, side=64, alpha=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pixels = np.full((side, side, 4), GRAY, np.uint8)
        pixels[..., 3] = 0
        pixels[16:48, 16:48] = (*tile_colours()[i % 6], 255)
        mode = "RGBA" if alpha else "RGB"
        Image.fromarray(pixels if alpha else pixels[..., :3], mode).save(folder / name)
    return folder


def test_from_folder_orders_naturally_and_keeps_alpha(tmp_path):
    names = ["view_10.png", "view_2.png", "view_3.png", "view_4.png", "view_5.png", "view_1.png"]
    folder = write_views(tmp_path / "v", names, alpha=True)
    views = PosedViews.from_folder(folder)
    # natural order: view_1, view_2, ..., view_10 -> colours of the files in that order
    order = [5, 1, 2, 3, 4, 0]
    for i, j in enumerate(order):
        np.testing.assert_array_equal(views.images[i, 32, 32], np.float32(tile_colours()[j]) / 255)
    assert views.masks[:, 32, 32].min() == 1.0 and views.masks[:, 0, 0].max() == 0.0
    np.testing.assert_array_equal(views.intrinsics, zero123pp_cameras("v1.2", 4.0, 64)[0])


def test_from_folder_computes_masks_for_opaque_views(tmp_path):
    folder = write_views(tmp_path / "v", [f"{i:02d}.jpg" for i in range(6)])
    views = PosedViews.from_folder(folder)
    assert (views.masks[:, 20:44, 20:44] > 0.5).all() and (views.masks[:, :8, :8] < 0.5).all()


def test_from_folder_errors(tmp_path):
    with pytest.raises(InputError, match="holds 5 images but a views folder needs exactly six"):
        PosedViews.from_folder(write_views(tmp_path / "five", [f"{i:02d}.png" for i in range(5)]))
    uneven = write_views(tmp_path / "uneven", [f"{i:02d}.png" for i in range(6)])
    Image.new("RGB", (64, 48)).save(uneven / "05.png")
    with pytest.raises(InputError, match="square and of one size"):
        PosedViews.from_folder(uneven)
    broken = write_views(tmp_path / "broken", [f"{i:02d}.png" for i in range(6)])
    (broken / "03.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"Cannot read .*03\.png"):
        PosedViews.from_folder(broken)
    with pytest.raises(InputError, match="not a folder"):
        PosedViews.from_folder(tmp_path / "missing")


def test_save_load_is_lossless(tmp_path):
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
    views = PosedViews(
        images=rng.random((6, 32, 32, 3), dtype=np.float32),
        masks=rng.random((6, 32, 32), dtype=np.float32),
        intrinsics=zero123pp_cameras("v1.1", 3.3, 32)[0],
        cam_to_world=zero123pp_cameras("v1.1", 3.3, 32)[1],
        poses="v1.1",
        normals=normals / np.linalg.norm(normals, axis=-1, keepdims=True),
    )
    views.save(tmp_path / "saved")
    loaded = PosedViews.load(tmp_path / "saved")
    for name in ("images", "masks", "intrinsics", "cam_to_world", "normals"):
        original, back = getattr(views, name), getattr(loaded, name)
        assert back.dtype == original.dtype
        np.testing.assert_array_equal(back, original)
    assert loaded.poses == "v1.1"
    png = Image.open(tmp_path / "saved" / "03.png")
    assert png.mode == "RGBA" and png.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(png)[..., 3], np.round(views.masks[3] * 255).astype(np.uint8))
    assert not list((tmp_path / "saved").glob(".*"))
    with pytest.raises(InputError, match=r"posed_views\.npz"):
        PosedViews.load(tmp_path)


def test_read_views_dispatches(tmp_path):
    grid, _ = make_grid()
    grid.save(tmp_path / "views.png")
    from_grid = read_views(tmp_path / "views.png")
    from_grid.save(tmp_path / "saved")
    np.testing.assert_array_equal(read_views(tmp_path / "saved").masks, from_grid.masks)
    six = write_views(tmp_path / "six", [f"{i:02d}.png" for i in range(6)], alpha=True)
    assert read_views(six).size == (64, 64)
    with pytest.raises(InputError, match="does not exist"):
        read_views(tmp_path / "nothing.png")
