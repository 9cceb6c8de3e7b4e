"""``img2mesh views`` end to end with the tiny random-weight Zero123++ model, and one sentence per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from img2mesh.cli import cli


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small RGBA cut-out photo (a blue disc), so no background removal is needed."""
    yy, xx = np.mgrid[0:160, 0:200]
    rgba = np.zeros((160, 200, 4), np.uint8)
    rgba[..., :3] = (40, 90, 220)
    rgba[..., 3] = np.where((xx - 90) ** 2 + (yy - 70) ** 2 <= 50**2, 255, 0)
    path = tmp_path / "disc.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads and an empty Hugging Face cache: every weight must come from the tiny model folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def views(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["views", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_views_writes_a_complete_folder_reproducibly(tiny_zero123pp: Path, photo: Path, tmp_path: Path) -> None:
    common = ["--model", tiny_zero123pp, "--steps", 1, "--device", "cpu"]
    code, output = views(photo, "-o", tmp_path / "a", "--seed", 5, *common)
    assert code == 0, output
    folder = tmp_path / "a" / "disc"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["disc"]  # no temporary folder left beside it
    cutout = Image.open(folder / "input.png")
    assert cutout.mode == "RGBA" and cutout.size == (512, 512)
    assert Image.open(folder / "views.png").size == (640, 960)
    for i in range(6):
        view = Image.open(folder / "views" / f"{i:02d}.png")
        assert view.mode == "RGBA" and view.size == (320, 320)
    assert (folder / "transforms.json").is_file()
    # The denoising progress bar ran. Its opening line is printed at once; "1/1" only when the step outlasts tqdm's
    # refresh interval (the bar is cleared on close), so asserting that failed on a fast, idle machine.
    assert "diffusion:   0%" in output
    assert f"written to {folder}/" in output

    grids = {}
    for name, seed in (("b", 5), ("c", 6)):
        code, output = views(photo, "-o", tmp_path / name, "--seed", seed, "--quiet", *common)
        assert code == 0 and output == "", output  # --quiet prints nothing, progress bars included
        grids[name] = np.asarray(Image.open(tmp_path / name / "disc" / "views.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "views.png")), grids["b"])  # same seed, same views
    assert np.abs(grids["b"].astype(int) - grids["c"].astype(int)).max() > 0


def test_normals_give_mattes_and_normal_maps(tiny_zero123pp: Path, photo: Path, tmp_path: Path) -> None:
    controlnet = tiny_zero123pp / "normal_controlnet"
    code, output = views(
        photo, "-o", tmp_path / "n", "--model", tiny_zero123pp, "--steps", 1, "--device", "cpu", "--quiet",
        "--normals", "--set", f"multiview.normals_model={controlnet}",
    )  # fmt: skip
    assert code == 0, output
    folder = tmp_path / "n" / "disc"
    assert Image.open(folder / "normals.png").size == (640, 960)
    from recon.posed_views import PosedViews

    posed = PosedViews.load(folder / "views")
    assert posed.normals is not None and posed.normals.shape == (6, 320, 320, 3)
    lengths = np.linalg.norm(posed.normals, axis=-1)
    assert np.allclose(lengths[posed.masks > 0.5], 1.0, atol=1e-2)  # unit normals wherever the matte is solid


def test_normals_need_their_weights(tiny_zero123pp: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = views(photo, "-o", out, "--model", tiny_zero123pp, "--device", "cpu", "--normals")
    assert_one_sentence_and_no_output(code, output, out, "controlnet-zp12-normal-gen-v1", "img2mesh download")


def assert_one_sentence_and_no_output(code: int, output: str, out: Path, *parts: str) -> None:
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), output
    for part in parts:
        assert part in output, (part, output)
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_image(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    out = tmp_path / "out"
    assert_one_sentence_and_no_output(*views(broken, "-o", out), out, "broken.png", "not a readable image")


def test_missing_weights_offline(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = views(photo, "-o", out, "--model", "sudo-ai/zero123plus-v1.2", "--device", "cpu")
    assert_one_sentence_and_no_output(code, output, out, "sudo-ai/zero123plus-v1.2", "img2mesh download")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA GPU")
def test_cuda_requested_without_a_gpu(tiny_zero123pp: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = views(photo, "-o", out, "--model", tiny_zero123pp, "--device", "cuda")
    assert_one_sentence_and_no_output(code, output, out, "CUDA was requested", "--device cpu")


def test_unknown_config_key(photo: Path, tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("multiview:\n  stepz: 2\n")
    out = tmp_path / "out"
    code, output = views(photo, "-o", out, "--config", config)
    assert_one_sentence_and_no_output(code, output, out, "'multiview.stepz'")


def test_unwritable_output(tiny_zero123pp: Path, photo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    code, output = views(photo, "-o", blocker / "out", "--model", tiny_zero123pp, "--device", "cpu")
    assert_one_sentence_and_no_output(code, output, blocker / "out", "inside a file")
    assert blocker.read_text().startswith("a file")
