"""``img2mesh run`` and the pipeline object: the whole job, its output folder, and one sentence per bad input.

The tiny random-weight Zero123++ model draws noise, and noise has no object in it, so with that model a run goes
through the real diffusion, posing and masking and is then refused by the reconstruction — which is exactly how a
run must fail: one sentence, nothing left behind. The complete folder is tested with a perfect multi-view model:
the pipeline with the tiny model loaded, whose views stage returns the oracle grid the shipped example was rendered
from (``examples/spot_views.png``: Spot at the six v1.2 poses), so every other stage runs for real and the mesh
can be compared with the ground truth.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from PIL import Image

import img2mesh
from img2mesh.cli import cli
from img2mesh.config import config_to_dict, load_config
from img2mesh.errors import InputError
from img2mesh.pipeline import STAGES, Img2Mesh
from img2mesh.run_record import RUN_JSON, RunRecord, is_complete

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MESHES = REPO / "tests" / "data" / "meshes"

#: On top of the CPU preset: a short fit and a small preview. The folder's structure is under test here, not the
#: mesh's quality (that is the `recon` test below), and the fit is the run's whole cost.
CPU = {"runtime.device": "cpu", "recon.iterations": [40, 40], "recon.rays": 512, "preview.size": 128}


class PerfectViews(Img2Mesh):
    """The pipeline with a perfect multi-view model: the views of the example photo are its oracle grid."""

    def generate_views(self, cutout, seed=None):
        self.load()  # the real (tiny) model is still loaded, so run.json records real weights
        return Image.open(EXAMPLES / "spot_views.png").convert("RGB")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads and an empty Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture(scope="module")
def spot_run(tiny_zero123pp: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunRecord, Path, Path]:
    """One complete run on the Spot example photo: its record, its folder and its --export copy."""
    out = tmp_path_factory.mktemp("run")
    config = load_config("cpu", {**CPU, "multiview.model": str(tiny_zero123pp)})
    record = PerfectViews(config, progress=False).run(EXAMPLES / "photos" / "spot.png", out / "spot", out / "spot.glb")
    return record, out / "spot", out / "spot.glb"


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# ------------------------------------------------------------------------------------------- complete runs


def test_run_writes_the_documented_folder(spot_run: tuple[RunRecord, Path, Path]) -> None:
    _, folder, _ = spot_run
    assert sorted(p.name for p in folder.parent.iterdir()) == ["spot", "spot.glb"]  # no temporary folder left
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    expected = {"input.png", "views.png", "transforms.json", "mesh.glb", "preview.png", "run.json"}
    expected |= {f"views/{i:02d}.png" for i in range(6)}
    assert expected <= names
    assert Image.open(folder / "input.png").mode == "RGBA" and Image.open(folder / "input.png").size == (512, 512)
    assert Image.open(folder / "views.png").size == (640, 960)
    for i in range(6):
        view = Image.open(folder / "views" / f"{i:02d}.png")
        assert view.mode == "RGBA" and view.size == (320, 320)
        assert 0.05 < (np.asarray(view)[..., 3] > 127).mean() < 0.7  # the mask holds Spot, not the whole tile
    frames = json.loads((folder / "transforms.json").read_text())["frames"]
    assert len(frames) == 6

    mesh = trimesh.load(folder / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 500 and mesh.visual.uv is not None
    np.testing.assert_allclose(mesh.bounds[:, 1], [0, 1], atol=1e-6)  # stands on y = 0, export.height (1 m) high
    preview = np.asarray(Image.open(folder / "preview.png").convert("RGB"))
    obj = np.abs(preview.astype(int) - 255).sum(-1) > 30
    assert preview.shape == (128, 128, 3) and 0.05 < obj.mean() < 0.7
    ys, xs = np.nonzero(obj)
    assert abs(xs.mean() - 64) < 16 and abs(ys.mean() - 64) < 16


def test_run_json_records_what_was_done(spot_run: tuple[RunRecord, Path, Path], tiny_zero123pp: Path) -> None:
    record, folder, export = spot_run
    saved = json.loads((folder / RUN_JSON).read_text())
    assert saved == json.loads(json.dumps(record.to_dict()))
    assert saved["model"] == {"id": str(tiny_zero123pp), "revision": None, "commit": None, "path": str(tiny_zero123pp)}
    for package in ("python", "img2mesh", "torch", "diffusers", "transformers"):
        assert saved["versions"][package], package
    assert saved["versions"]["img2mesh"] == img2mesh.__version__
    assert saved["seed"] == 42 and saved["config"]["runtime"]["seed"] == 42 and saved["device"] == "cpu"
    assert saved["config"] == config_to_dict(load_config("cpu", {**CPU, "multiview.model": str(tiny_zero123pp)}))
    assert list(saved["timings"]) == list(STAGES) and all(t >= 0 for t in saved["timings"].values())
    assert saved["export"]["height_m"] == 1.0 and saved["export"]["base_colour"] == "views, sRGB"
    (level,) = saved["export"]["levels"]
    assert level["texture_size"] == 256 and level["texels_per_metre"] > 100
    assert saved["outputs"]["mesh"] == ["mesh.glb"] and saved["outputs"]["preview"] == "preview.png"
    assert saved["finished"] >= saved["started"]
    assert saved["registration"] == {}  # the cpu preset does not register the views
    assert is_complete(folder)
    # The --export copy is the same mesh, written whole beside the folder.
    assert saved["outputs"]["export"] == [str(export.resolve())]
    assert len(trimesh.load(export, force="mesh").faces) == len(trimesh.load(folder / "mesh.glb", force="mesh").faces)


def test_timings_table_lists_every_stage(spot_run: tuple[RunRecord, Path, Path]) -> None:
    from img2mesh.commands.run import timings_table

    record = spot_run[0]
    lines = timings_table([record, record], load_seconds=1.5).splitlines()
    assert lines[0] == "model loaded in 1.5 s"
    assert lines[1].split() == ["input", "prep", "views", "pose", "fit", "finish", "export", "preview", "total"]
    assert [line.split()[0] for line in lines[3:]] == ["spot", "spot"]
    assert float(lines[3].split()[-1]) == pytest.approx(record.total_seconds, abs=0.01)


def test_recon_on_the_example_grid_matches_the_ground_truth(tmp_path: Path) -> None:
    # The Quickstart's offline command: the shipped grid → mesh, with the CPU preset; then the mesh against Spot.
    from recon.evaluation.metrics import chamfer_fscore
    from recon.export import world_to_file

    out = tmp_path / "spot.glb"
    code, output = invoke("recon", EXAMPLES / "spot_views.png", "--export", out, "--config", "cpu", "--quiet")
    assert code == 0, output
    mesh = trimesh.load(out, force="mesh")
    # the file is in glTF axes, standing on y = 0 and 1 m high; the ground truth is in the fit's world, z-up
    mesh.vertices = trimesh.transform_points(mesh.vertices, np.linalg.inv(world_to_file(out)))
    scores = chamfer_fscore(mesh, example_ground_truth())
    # Measured with the CPU preset (shaded colour, volume/area priors): Chamfer 0.0069, F@0.02 0.966, F@0.05 0.999
    # (0.0155 / 0.72 / 0.976 before them). The bars leave room for other platforms' float noise, and a fit cut short
    # fails them (40 + 40 steps, before the priors: Chamfer 0.026, F@0.05 0.84).
    assert scores["chamfer"] < 0.012 and scores["fscore@0.02"] > 0.85 and scores["fscore@0.05"] > 0.97, scores


def test_two_recon_commands_write_the_same_mesh(tmp_path: Path) -> None:
    # Same input, seed, config and machine, two processes as a user runs them, on two threads: one mesh.
    meshes = []
    for name in ("a", "b"):
        args = ["recon", EXAMPLES / "spot_views.png", "--config", "cpu", "--set", "recon.iterations=[15,15]", "--quiet"]
        args += ["--faces", 1000, "--texture-size", 128, "--export", tmp_path / name / "spot.glb"]
        result = subprocess.run(
            [sys.executable, "-c", "from img2mesh.cli import main; main()", *map(str, args)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        assert result.returncode == 0, result.stderr
        meshes.append((tmp_path / name / "spot.glb").read_bytes())
    assert meshes[0] == meshes[1]


def test_same_seed_same_views(tiny_zero123pp: Path) -> None:
    overrides = {"multiview.model": str(tiny_zero123pp), "multiview.steps": 1, "multiview.guidance": 1.0}
    pipeline = Img2Mesh(load_config(None, overrides), progress=False)
    cutout = pipeline.prepare_input(EXAMPLES / "photos" / "cake.png")
    first, again, other = (np.asarray(pipeline.generate_views(cutout, seed=s)) for s in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    changed = (first != other).any(-1).mean()
    assert changed > 0.5, changed  # another seed draws other noise almost everywhere


def example_ground_truth():
    """Spot as the example grid shows it: normalised, world z-up, turned by the example script's yaw."""
    from recon.evaluation.oracle import load_mesh

    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mesh = load_mesh(MESHES / module.GRID_MESH)
    angle = math.radians(module.YAW.get(module.GRID_MESH, 0.0))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, [0, 0, 1]))
    return mesh


def test_skip_existing_keeps_finished_folders_and_failures_do_not_stop_others(
    spot_run: tuple[RunRecord, Path, Path], tiny_zero123pp: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(spot_run[1], out / "spot")
    before = (out / "spot" / RUN_JSON).read_text()
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(EXAMPLES / "photos" / "spot.png", photos / "spot.png")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["run", photos, "-o", out, "--skip-existing", "--model", tiny_zero123pp, "--device", "cpu", "--steps", 1]
    code, output = invoke(*args)
    assert code == 2, output  # the one input that ran failed, and says why in one sentence
    assert "spot.png: skipped" in output
    assert "Error: Input" in output and "broken.png is not a readable image" in output
    assert (out / "spot" / RUN_JSON).read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["spot"]  # nothing for the broken photo, no temporary folder

    code, output = invoke("run", photos / "spot.png", "-o", out, "--skip-existing", "--model", tiny_zero123pp)
    assert code == 0 and "Nothing to do" in output, output


def test_tiny_model_views_are_noise_and_the_run_fails_cleanly(tiny_zero123pp: Path, tmp_path: Path) -> None:
    # Real diffusion (one step), real posing and masking; noise holds no object, so reconstruction refuses it.
    out = tmp_path / "out"
    photo = EXAMPLES / "photos" / "cake.png"
    args = ["--model", tiny_zero123pp, "--steps", 1, "--guidance", 1.0, "--seed", 7, "--device", "cpu", "--quiet"]
    code, output = invoke("run", photo, "-o", out, *args, "--config", "cpu")
    assert_one_sentence(code, output, "mask")
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------------------------- bad inputs


def assert_one_sentence(code: int, output: str, *parts: str) -> None:
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), output
    for part in parts:
        assert part in output, (part, output)


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    """Things a user might pass by mistake."""
    paths = {
        "broken": tmp_path / "broken.png",
        "empty_dir": tmp_path / "no_images",
        "bad_yaml": tmp_path / "bad.yaml",
        "a_file": tmp_path / "a_file",
    }
    paths["broken"].write_bytes(b"GIF89a but not really")
    paths["empty_dir"].mkdir()
    (paths["empty_dir"] / "notes.txt").write_text("no images here")
    paths["bad_yaml"].write_text("recon:\n  bogus_key: 1\n")
    paths["a_file"].write_text("not a folder")
    return paths


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["{broken}", "--model", "{tiny}"], ["broken.png", "not a readable image"]),
        (["{empty_dir}"], ["no_images", "no PNG, JPEG or WebP"]),
        (["{tmp}/missing.png"], ["missing.png", "does not exist"]),
        (["{spot}", "--model", "sudo-ai/zero123plus-v1.2"], ["zero123plus-v1.2", "img2mesh download"]),
        (["{spot}", "--model", "{tiny}", "--device", "cuda"], ["CUDA", "--device cpu"]),
        (["{spot}", "-o", "{a_file}/out"], ["a_file", "file"]),
        (["{spot}", "--config", "{bad_yaml}"], ["recon.bogus_key"]),
        (["{spot}", "--set", "multiview.bogus=1"], ["multiview.bogus"]),
        (["{spot}", "--config", "no_such_preset"], ["no_such_preset", "preset"]),
        (["{spot}", "{cake}", "--export", "{tmp}/x.glb"], ["--export", "one input"]),
    ],
    ids=[
        "unreadable-image",
        "dir-without-images",
        "missing-input",
        "weights-offline",
        "cuda-without-gpu",
        "unwritable-output",
        "unknown-config-key",
        "unknown-set-key",
        "unknown-preset",
        "export-many",
    ],
)
def test_bad_input_gets_one_sentence_and_leaves_nothing(
    tiny_zero123pp: Path, tmp_path: Path, bad_inputs: dict[str, Path], args: list[str], parts: list[str]
) -> None:
    values = {k: str(v) for k, v in bad_inputs.items()}
    values.update(
        tmp=str(tmp_path),
        tiny=str(tiny_zero123pp),
        spot=str(EXAMPLES / "photos" / "spot.png"),
        cake=str(EXAMPLES / "photos" / "cake.png"),
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    out = ["-o", str(tmp_path / "out")] if "-o" not in args else []
    code, output = invoke("run", *[a.format(**values) for a in args], *out, "--quiet")
    assert_one_sentence(code, output, *parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, no temporary files


def test_python_api_raises_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        img2mesh.run(tmp_path / "missing.png", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match=r"recon\.bogus"):
        img2mesh.run(EXAMPLES / "photos" / "spot.png", tmp_path / "out", overrides={"recon.bogus": 1})
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ shared options


def test_every_shared_option_is_a_config_key_and_overrides_the_file(tmp_path: Path) -> None:
    from img2mesh.commands.options import CONFIG_OPTIONS, config_from_options

    file = tmp_path / "mine.yaml"
    file.write_text("multiview:\n  steps: 9\nmesh:\n  faces: 1234\nexport:\n  format: obj\n")
    config = config_from_options({"config_path": str(file)})
    assert (config.multiview.steps, config.mesh.faces, config.export.format) == (9, 1234, "obj")
    config = config_from_options(
        {"config_path": str(file), "steps": 3, "format": "ply", "set_values": ["mesh.faces=777"]}
    )
    assert (config.multiview.steps, config.mesh.faces, config.export.format) == (3, 777, "ply")
    for name, option in CONFIG_OPTIONS.items():
        section, _, key = option.key.partition(".")
        assert hasattr(getattr(config, section), key), name


def test_a_cpu_job_without_a_preset_takes_the_cpu_preset(caplog: pytest.LogCaptureFixture) -> None:
    from img2mesh.commands.options import config_from_options

    with caplog.at_level(logging.WARNING, logger="img2mesh"):
        config = config_from_options({"device": "cpu", "faces": 3000})
    assert config.recon == load_config("cpu").recon and config.mesh.faces == 3000  # options still win
    assert [record.getMessage() for record in caplog.records] == [
        "The job runs on the CPU: using the cpu preset (smaller grids); pass --config default to keep the GPU settings."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="img2mesh"):
        config = config_from_options({"device": "cpu", "config_path": "default"})
    assert config.recon == load_config("default").recon and caplog.records == []


# ----------------------------------------------------------------------------------------------- run.json


def test_cache_commit_is_read_from_hub_snapshot_folders(tmp_path: Path) -> None:
    from img2mesh.run_record import cache_commit

    snapshot = tmp_path / "hub" / "models--sudo-ai--zero123plus-v1.2" / "snapshots" / "2da07e89919e1a130c9b5add"
    assert cache_commit(snapshot) == "2da07e89919e1a130c9b5add"
    assert cache_commit(tmp_path / "my-model") is None


def test_a_folder_is_complete_only_with_a_finished_record_and_its_files(
    spot_run: tuple[RunRecord, Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "spot"
    shutil.copytree(spot_run[1], folder)
    assert is_complete(folder)
    (folder / "preview.png").unlink()
    assert not is_complete(folder)  # a listed file is missing
    shutil.copy(spot_run[1] / "preview.png", folder / "preview.png")
    (folder / RUN_JSON).write_text((folder / RUN_JSON).read_text()[:-20])
    assert not is_complete(folder)  # a torn record
    (folder / RUN_JSON).unlink()
    assert not is_complete(folder)
