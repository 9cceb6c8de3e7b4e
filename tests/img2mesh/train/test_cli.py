"""``img2mesh train`` refuses bad data and output folders in one sentence before loading a model, and
``--lora`` brings an adapter into ``img2mesh views``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from img2mesh.cli import cli


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads and an empty Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(map(str, args)))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def one_sentence(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def test_empty_or_corrupt_data_folders_get_one_sentence(pairs: Path, tmp_path: Path):
    # A model that does not exist: the data is checked first, so the data's problem is what the user hears.
    args = ["-o", tmp_path / "run", "--model", tmp_path / "no-model", "-q"]
    (tmp_path / "empty").mkdir()
    code, out = invoke("train", tmp_path / "empty", *args)
    assert code == 2 and "has no index.json" in one_sentence(out)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "index.json").write_text("{ not json")
    code, out = invoke("train", corrupt, *args)
    assert code == 2 and "is damaged" in one_sentence(out)

    missing = tmp_path / "missing"
    shutil.copytree(pairs, missing)
    (missing / "spot" / "target_01.png").unlink()
    code, out = invoke("train", missing, *args)
    assert code == 2 and "target_01.png" in one_sentence(out) and "missing" in out

    code, out = invoke("train", pairs, *args)  # good data: now the model is what is wrong
    assert code == 2 and "no-model" in one_sentence(out)
    assert not (tmp_path / "run").exists()


def test_a_malformed_set_value_is_one_sentence(tmp_path: Path):
    code, out = invoke("train-data", tmp_path / "meshes", "-o", tmp_path / "pairs", "--set", "=3", "-q")
    assert code == 2 and "must look like KEY=VALUE" in one_sentence(out)
    assert not (tmp_path / "pairs").exists()


def test_run_folders_are_not_overwritten_and_resume_needs_a_checkpoint(pairs: Path, small_model: Path, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, out = invoke("train", pairs, "-o", tmp_path / "run", "--model", small_model, "-q")
    assert code == 2 and "--resume" in one_sentence(out)
    code, out = invoke("train", pairs, "-o", tmp_path / "run", "--model", small_model, "--resume", "-q")
    assert code == 2 and "no checkpoint" in one_sentence(out)
    code, out = invoke("train", pairs, "-o", tmp_path / "new", "--full", "--lora-rank", "8", "-q")
    assert code == 2 and "--full" in one_sentence(out)


def test_views_runs_with_a_lora(small_model: Path, pairs: Path, tmp_path: Path):
    from diffusers import UNet2DConditionModel

    from img2mesh.train.lora import add_lora, save_lora

    unet = UNet2DConditionModel.from_pretrained(small_model / "unet")
    add_lora(unet, rank=4)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    save_lora(unet, tmp_path / "run" / "adapter")
    photo = pairs / "duck" / "condition_00.png"
    common = ["--model", small_model, "--steps", "2", "--device", "cpu", "--remove-bg", "none", "-q"]
    grids = []
    for extra in ([], ["--lora", tmp_path / "run"]):
        code, out = invoke("views", photo, "-o", tmp_path / ("lora" if extra else "base"), *common, *extra)
        assert code == 0, out
        grids.append(np.asarray(Image.open(tmp_path / ("lora" if extra else "base") / "condition_00" / "views.png")))
    assert grids[0].shape == grids[1].shape == (960, 640, 3)
    assert not np.array_equal(*grids)

    (tmp_path / "full" / "model").mkdir(parents=True)
    (tmp_path / "full" / "model" / "model_index.json").write_text(json.dumps({}))
    code, out = invoke("views", photo, "-o", tmp_path / "x", *common, "--lora", tmp_path / "full")
    assert code == 2 and "full fine-tune" in one_sentence(out)
