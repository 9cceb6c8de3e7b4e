"""``img2mesh train-data``: meshes rendered into condition cut-outs and target grids laid out as the model's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from img2mesh.cli import cli
from recon.mesh_grids import load_normalised_mesh, render_grid

SMALL = ["--conditions", "2", "--view-size", "64", "--set", "condition_size=64", "--set", "supersample=1"]


def train_data(*args) -> tuple[int, str, str]:
    """Exit code, all output, and the error output alone."""
    result = CliRunner().invoke(cli, ["train-data", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output, result.stderr


def test_pairs_are_the_pipeline_layout_rendered_at_the_poses_relative_to_the_condition(
    pairs: Path, training_meshes: Path
):
    index = json.loads((pairs / "index.json").read_text())
    assert [m["name"] for m in index["meshes"]] == ["duck", "spot"]
    assert index["settings"]["poses"] == "v1.2"
    duck = index["meshes"][0]
    assert len(duck["samples"]) == 2
    for sample in duck["samples"]:
        assert 0 <= sample["azimuth"] < 360 and -20 <= sample["elevation"] <= 45
        target = np.asarray(Image.open(pairs / sample["target"]))
        assert target.shape == (192, 128, 3)  # 3 rows x 2 columns of 64-px views, as the pipeline's 960x640
        asset = load_normalised_mesh(training_meshes / "duck.glb")
        expected, _ = render_grid(asset, "v1.2", sample["azimuth"], 64, supersample=1)
        # The stored azimuth is rounded to 1/1000 degree: a few silhouette pixels may differ by a level.
        assert np.mean(np.abs(target.astype(int) - expected)) < 0.5
        assert (target[0, 0] == 127).all()  # gray background
        condition = Image.open(pairs / sample["condition"])
        assert condition.mode == "RGBA" and condition.size == (64, 64)
        alpha = np.asarray(condition.getchannel("A"))
        assert alpha[0, 0] == 0 and alpha[32, 32] > 0  # a centred cut-out, as `run` prepares a photo
    assert duck["samples"][0]["azimuth"] != duck["samples"][1]["azimuth"]


def test_bad_meshes_are_reported_and_skipped_and_a_rerun_resumes(tmp_path: Path, training_meshes: Path):
    meshes = training_meshes
    (meshes / "broken.glb").write_bytes(b"not a mesh")
    code, out, err = train_data(meshes, "-o", tmp_path / "data", "-q", *SMALL)
    assert code == 0
    assert "broken.glb" in err and "spot" not in err
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    assert [m["name"] for m in index["meshes"]] == ["duck", "spot"]
    assert [s["source"] for s in index["skipped"]] == ["broken.glb"]

    (meshes / "broken.glb").unlink()
    first = (tmp_path / "data" / "duck" / "target_00.png").stat().st_mtime_ns
    code, out, _ = train_data(meshes, "-o", tmp_path / "data", *SMALL)
    assert code == 0 and "0 mesh(es) rendered, 2 already there, 0 skipped" in out
    assert (tmp_path / "data" / "duck" / "target_00.png").stat().st_mtime_ns == first

    code, out, err = train_data(meshes, "-o", tmp_path / "data", *SMALL, "--poses", "v1.1")
    assert code == 2 and "other settings" in out and len(out.strip().splitlines()) == 1


def test_a_folder_without_meshes_gets_one_sentence(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    code, out, _ = train_data(tmp_path / "empty", "-o", tmp_path / "data")
    assert code == 2
    assert out.startswith("Error: ") and "no GLB, glTF, OBJ or PLY files" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()
