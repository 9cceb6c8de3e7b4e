"""Every bad option or config value of the commands that compute: one sentence, exit status 2, no traceback,
nothing written, and no compute spent (the command stops before the fitting or the diffusion model is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
GRID = REPO / "examples" / "spot_views.png"

#: Runs the CLI in a fresh interpreter and reports which stages' modules it imported on the way to its exit.
PROBE = """
import json, sys
from img2mesh.cli import cli
code = 0
try:
    cli(sys.argv[1:], prog_name="img2mesh")
except SystemExit as exit:
    code = exit.code
stages = ("recon.fit", "diffusers", "img2mesh.zero123pp.pipeline")
print(json.dumps({"code": code, "imported": [m for m in stages if m in sys.modules]}))
"""


def probe(args: list[str | Path], cwd: Path, **env: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def assert_refused(report: dict, stderr: str, *words: str) -> None:
    assert report == {"code": 2, "imported": []}, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in errors[0], stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--faces", "0"], ["'mesh.faces' is 0", "--faces 0", "at least 200"]),
        (["--faces", "-5"], ["'mesh.faces' is -5", "at least 200"]),
        (["--texture-size", "3"], ["'texture.size' is 3", "--texture-size 3", "power of two from 64 to 8192"]),
        (["--texture-size", "16384"], ["'texture.size' is 16384", "power of two"]),
        (["--set", "mesh.faces=abc"], ["'mesh.faces' is 'abc'", "--set mesh.faces=abc", "type int"]),
        (["--set", "mesh.face=3"], ["Unknown config key 'mesh.face'", "--set mesh.face=3"]),
        (["--set", "recon.iterations=[10]"], ["'recon.iterations'", "--set recon.iterations=[10]", "per stage"]),
        (["--export", "/proc/img2mesh/x.glb"], ["/proc/img2mesh", "writable"]),
        (["--export", "spot.fbx"], ["unknown mesh format 'fbx'"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) and value[0].startswith("-") else "",
)
def test_recon_refuses_before_fitting(tmp_path: Path, args: list[str], words: list[str]) -> None:
    report, stderr = probe(["recon", GRID, "--config", "cpu", "--export", "out/spot.glb", *args], cwd=tmp_path)
    assert_refused(report, stderr, *words)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, not even the export's folder


@pytest.mark.parametrize("command", ["run", "views", "batch"])
def test_photo_commands_refuse_before_the_model(tmp_path: Path, command: str) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGBA", (64, 64)).save(photo)
    report, stderr = probe([command, photo, "-o", tmp_path / "out", "--steps", "0", "--poses", "v1.1"], cwd=tmp_path)
    assert_refused(report, stderr, "'multiview.steps' is 0", "--steps 0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_missing_rembg_model_offline_is_reported_before_the_model_loads(tmp_path: Path, tiny_zero123pp: Path) -> None:
    photo = tmp_path / "photo.jpg"  # a JPEG has no alpha: it needs rembg
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(photo)
    offline = {"HF_HUB_OFFLINE": "1", "U2NET_HOME": str(tmp_path / "u2net"), "HF_HOME": str(tmp_path / "hf")}
    for command in ("run", "views"):
        args = [command, photo, "-o", tmp_path / "out", "--model", tiny_zero123pp, "--device", "cpu", "--steps", "1"]
        report, stderr = probe([*args, "--remove-bg", "auto"], cwd=tmp_path, **offline)
        assert_refused(report, stderr, "u2net.onnx", "is not on this machine", "--remove-bg none")
        assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_is_refused_up_front(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGBA", (64, 64)).save(photo)
    (tmp_path / "file").write_text("not a folder")
    report, stderr = probe(["views", photo, "-o", tmp_path / "file" / "out"], cwd=tmp_path)
    assert_refused(report, stderr, "inside a file")


def test_recon_refuses_unreadable_or_wrong_views_and_a_missing_gpu(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_text("not an image")
    Image.new("RGB", (100, 100), (200, 10, 10)).save(tmp_path / "small.png")
    cases = [
        (["broken.png"], ["Cannot read broken.png as an image"]),
        (["small.png"], ["100x100 pixels", "640x960"]),
        ([GRID, "--device", "cuda"], ["CUDA was requested but no CUDA GPU is visible"]),
    ]
    for args, words in cases:
        report, stderr = probe(["recon", *args, "--export", "out/spot.glb"], cwd=tmp_path, CUDA_VISIBLE_DEVICES="")
        assert_refused(report, stderr, *words)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "small.png"]


@pytest.mark.parametrize("command", ["run", "views"])
def test_missing_gpu_or_weights_are_reported_before_diffusers_loads(tmp_path: Path, command: str) -> None:
    photo = tmp_path / "photo.png"
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[16:48, 16:48] = (200, 120, 40, 255)
    Image.fromarray(pixels).save(photo)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    args = [command, photo, "-o", tmp_path / "out", "--remove-bg", "none"]
    cases = [
        (["--device", "cuda"], ["CUDA was requested but no CUDA GPU is visible"]),
        (["--device", "cpu"], ["sudo-ai/zero123plus-v1.2 is not in the Hugging Face cache", "img2mesh download"]),
        (["--device", "cpu", "--model", tmp_path / "no-model"], ["no-model' does not exist"]),
    ]
    for extra, words in cases:
        report, stderr = probe([*args, *extra], cwd=tmp_path, **offline)
        assert_refused(report, stderr, *words)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]

    # An unreadable photo (the only input) is said before the weights are looked for.
    photo.write_text("not an image")
    report, stderr = probe([*args, "--device", "cpu"], cwd=tmp_path, **offline)
    assert_refused(report, stderr, "is not a readable image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
