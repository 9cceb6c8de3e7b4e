"""``img2mesh dataset``: grid or folder in, dataset out; bad input gets one sentence and leaves nothing behind."""

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from img2mesh.cli import cli
from recon.cameras import zero123pp_cameras
from recon.dataset import read_dataset


def write_grid(path, width=640, height=960):
    pixels = np.full((height, width, 3), 127, np.uint8)
    side = width // 2
    for r in range(height // side):
        for c in range(2):
            pixels[r * side + side // 4 : r * side + 3 * side // 4, c * side + side // 4 : c * side + 3 * side // 4] = (
                40 * r,
                200,
                90 * c,
            )
    Image.fromarray(pixels).save(path)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_grid_to_dataset(tmp_path):
    grid = write_grid(tmp_path / "views.png")
    result = run("dataset", grid, "-o", tmp_path / "ds", "--poses", "v1.1", "--radius", "3", "--ns-masks")
    assert result.exit_code == 0, result.output
    assert "transforms.json" in result.output
    views = read_dataset(tmp_path / "ds")
    assert views.poses == "v1.1" and views.size == (320, 320)
    np.testing.assert_array_equal(views.cam_to_world, zero123pp_cameras("v1.1", 3.0)[1])
    assert (views.masks[:, 160, 160] == 1).all() and (views.masks[:, 5, 5] == 0).all()
    meta = json.loads((tmp_path / "ds" / "transforms.json").read_text())
    assert all("mask_path" in frame for frame in meta["frames"])
    # A rerun replaces the earlier dataset.
    assert run("dataset", grid, "-o", tmp_path / "ds").exit_code == 0
    assert read_dataset(tmp_path / "ds").poses == "v1.2"


def test_folder_of_six_views(tmp_path):
    folder = tmp_path / "six"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 64), (127, 127, 127)).save(folder / f"{i:02d}.png")
    assert run("dataset", folder, "-o", tmp_path / "ds", "-q").exit_code == 0
    assert read_dataset(tmp_path / "ds").size == (64, 64)


def assert_refused(result, tmp_path, *phrases):
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.startswith("Error: ") and message.count("\n") == 0, message
    for phrase in phrases:
        assert phrase in message
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary output left behind"


def test_wrong_grid_size_is_one_sentence_and_writes_nothing(tmp_path):
    grid = write_grid(tmp_path / "wide.png", width=960, height=640)
    assert_refused(run("dataset", grid, "-o", tmp_path / "ds"), tmp_path, "960x640 pixels", "640x960")


def test_folder_without_six_views(tmp_path):
    folder = tmp_path / "five"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (64, 64)).save(folder / f"{i:02d}.png")
    assert_refused(run("dataset", folder, "-o", tmp_path / "ds"), tmp_path, "holds 5 images", "exactly six")


def test_missing_source_and_foreign_output_folder(tmp_path):
    assert_refused(run("dataset", tmp_path / "nope.png", "-o", tmp_path / "ds"), tmp_path, "does not exist")
    grid = write_grid(tmp_path / "views.png")
    keep = tmp_path / "ds"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    result = run("dataset", grid, "-o", keep)
    assert result.exit_code == 2 and "is not a dataset folder" in result.output
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]
