"""The PyVista viewer, off-screen: screenshots and turntables of real meshes in every exported format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from PIL import Image

from img2mesh.cli import cli
from img2mesh.viewer import PreviewConfig, build_plotter, save_screenshot

MESHES = Path(__file__).resolve().parents[1] / "data" / "meshes"


def object_pixels(image: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    """Boolean mask of the pixels that differ from the background colour."""
    return np.abs(image[..., :3].astype(int) - np.array(background)).sum(-1) > 30


@pytest.fixture(scope="module")
def spot_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Spot (CC0) as GLB with its texture, OBJ with MTL + texture, and PLY with vertex colours."""
    folder = tmp_path_factory.mktemp("spot")
    mesh = trimesh.load(MESHES / "spot.obj", force="mesh")
    files = {"glb": folder / "spot.glb", "obj": folder / "spot.obj", "ply": folder / "spot.ply"}
    mesh.export(files["glb"])
    mesh.export(files["obj"])
    coloured = mesh.copy()
    coloured.visual = mesh.visual.to_color()
    coloured.export(files["ply"])
    return files


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_screenshot_shows_the_textured_object_centred(spot_files: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "shot.png"
    result = CliRunner().invoke(cli, ["show", str(spot_files[fmt]), "--screenshot", str(out), "--size", "160"])
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (160, 160, 3)
    obj = object_pixels(image)
    assert 0.05 < obj.mean() < 0.7  # the object is there and framed, neither a dot nor cut off
    ys, xs = np.nonzero(obj)
    assert abs(xs.mean() - 80) < 20 and abs(ys.mean() - 80) < 20  # roughly centred
    # The texture shows: Spot is white with black patches, so the object's pixels span dark and light.
    lum = image[obj].mean(-1)
    assert np.percentile(lum, 5) < 60 and np.percentile(lum, 95) > 120
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left beside it


def test_background_and_viewpoint_are_honoured(spot_files: dict[str, Path]) -> None:
    from img2mesh.viewer import render_image

    front = render_image(spot_files["glb"], PreviewConfig(size=96, azimuth=0, background="black"))
    side = render_image(spot_files["glb"], PreviewConfig(size=96, azimuth=90, background="black"))
    assert (front[0, 0] == 0).all() and (side[0, 0] == 0).all()
    assert object_pixels(front, (0, 0, 0)).mean() > 0.05
    assert np.abs(front.astype(int) - side.astype(int)).mean() > 5


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_turntable_turns(spot_files: dict[str, Path], suffix: str, tmp_path: Path) -> None:
    import imageio.v3 as iio

    out = tmp_path / f"turn{suffix}"
    args = ["show", str(spot_files["glb"]), "--turntable", str(out), "--size", "96"]
    result = CliRunner().invoke(cli, [*args, "--set", "preview.turntable_frames=8"])
    assert result.exit_code == 0, result.output
    frames = iio.imread(out, index=None)
    assert len(frames) == 8
    assert np.abs(frames[0].astype(int) - frames[2].astype(int)).mean() > 2  # the camera moved


def test_turntable_key_is_bound(spot_files: dict[str, Path]) -> None:
    from img2mesh.viewer import add_turntable_key

    plotter = build_plotter(spot_files["glb"], PreviewConfig(size=64))
    try:
        add_turntable_key(plotter, PreviewConfig(size=64))
        assert "t" in plotter.iren._key_press_event_callbacks
    finally:
        plotter.close()


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["missing.glb", "--screenshot", "{tmp}/a.png"], ["missing.glb", "does not exist"]),
        (["{tmp}/mesh.txt", "--screenshot", "{tmp}/a.png"], ["mesh.txt", ".glb"]),
        (["{glb}", "--screenshot", "{tmp}/nowhere/a.png"], ["nowhere", "does not exist"]),
        (["{glb}", "--turntable", "{tmp}/a.avi"], ["a.avi", ".gif or .mp4"]),
        (["{glb}", "--screenshot", "{tmp}/a.png", "--background", "nocolour"], ["nocolour", "colour"]),
        (["{glb}", "--screenshot", "{tmp}/a.png", "--set", "preview.bogus=1"], ["preview.bogus"]),
        (["{glb}"], ["No display", "--screenshot"]),
    ],
)
def test_bad_view_requests_get_one_sentence(
    spot_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], parts: list[str]
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    (tmp_path / "mesh.txt").write_text("not a mesh")
    argv = [a.format(tmp=tmp_path, glb=spot_files["glb"]) for a in args]
    result = CliRunner().invoke(cli, ["show", *argv])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), result.output
    for part in parts:
        assert part in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.txt"]


def test_preview_helper_writes_png(spot_files: dict[str, Path], tmp_path: Path) -> None:
    out = save_screenshot(spot_files["ply"], tmp_path / "p.png", PreviewConfig(size=48))
    assert Image.open(out).size == (48, 48)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("truncated.glb", b"glTF\x02\x00\x00\x00" + b"\x00" * 40, "cannot be read (Truncated glb file)"),
        ("png.glb", None, "cannot be read"),
        ("png.ply", None, "holds no geometry"),
    ],
)
def test_corrupt_mesh_files_get_one_sentence_and_no_vtk_log(
    spot_files: dict[str, Path], tmp_path: Path, name: str, content: bytes | None, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content if content is not None else (MESHES / "spot.png").read_bytes()[:400])
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from img2mesh.cli import main; main()",
            "show",
            str(path),
            "--screenshot",
            str(tmp_path / "shot.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.splitlines() == [result.stderr.strip()] and reason in result.stderr, result.stderr
    assert not (tmp_path / "shot.png").exists()
