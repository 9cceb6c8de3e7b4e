"""Finding the weights: local folders, the Hugging Face cache, and the sentence when they are missing offline."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from img2mesh.cli import cli
from img2mesh.errors import InputError
from img2mesh.zero123pp.weights import (
    CONTROLNET_LAYOUT,
    DEFAULT_MODEL,
    NORMAL_CONTROLNET,
    ZERO123PP_LAYOUT,
    resolve_model,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """An empty Hugging Face home with the hub switched off."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def cache_snapshot(home, repo: str, source) -> object:
    """Put ``source`` into the hub cache under ``home`` as the main-branch snapshot of ``repo``."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    return snapshot


def test_missing_weights_offline_name_the_model_and_the_fixes(offline_home):
    with pytest.raises(InputError) as info:
        resolve_model(DEFAULT_MODEL)
    message = str(info.value)
    assert DEFAULT_MODEL in message and "not in the Hugging Face cache" in message
    assert "img2mesh download" in message and "--model PATH" in message
    assert str(offline_home) in message


def test_from_pretrained_stops_before_loading_anything_offline(offline_home):
    from img2mesh.zero123pp import Zero123PlusPipeline

    with pytest.raises(InputError, match=re.escape("img2mesh download --model sudo-ai/zero123plus-v1.1")):
        Zero123PlusPipeline.from_pretrained("sudo-ai/zero123plus-v1.1")


def test_the_normal_controlnet_points_to_download_normals(offline_home):
    from img2mesh.zero123pp.normals import load_normal_controlnet

    with pytest.raises(InputError, match="img2mesh download --normals"):
        load_normal_controlnet()


def test_download_command_offline_exits_with_the_sentence(offline_home):
    result = CliRunner().invoke(cli, ["download", "--normals"])
    assert result.exit_code == 2
    assert "Error: Cannot download the Zero123++ model sudo-ai/zero123plus-v1.2 because HF_HUB_OFFLINE" in result.output
    assert not (offline_home / "hub").exists()


def test_a_cached_snapshot_is_used_offline(offline_home, tiny_zero123pp):
    from img2mesh.zero123pp import Zero123PlusPipeline

    snapshot = cache_snapshot(offline_home, DEFAULT_MODEL, tiny_zero123pp)
    assert resolve_model(DEFAULT_MODEL) == snapshot
    pipe = Zero123PlusPipeline.from_pretrained(DEFAULT_MODEL)
    assert pipe.config.version == "v1.2"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert len(pipe.config.ramping_coefficients) == 77


def test_a_partly_cached_snapshot_is_reported(offline_home, tiny_zero123pp):
    snapshot = cache_snapshot(offline_home, DEFAULT_MODEL, tiny_zero123pp)
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(InputError, match="only partly in the Hugging Face cache"):
        resolve_model(DEFAULT_MODEL)


def test_an_incomplete_folder_names_what_it_lacks(tmp_path, tiny_zero123pp):
    folder = shutil.copytree(tiny_zero123pp, tmp_path / "model")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(InputError) as info:
        resolve_model(folder)
    message = str(info.value)
    assert "unet/diffusion_pytorch_model.safetensors|unet/diffusion_pytorch_model.bin" in message
    assert "tokenizer/vocab.json" in message and "tokenizer/merges.txt" in message


def test_a_missing_folder_is_reported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(InputError, match="does not exist"):
        resolve_model("not a hub id")


def test_a_folder_of_another_pipeline_is_refused(tmp_path, tiny_zero123pp):
    from img2mesh.zero123pp import Zero123PlusPipeline

    folder = shutil.copytree(tiny_zero123pp, tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["vision_encoder"] = ["transformers", "CLIPVisionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="declares vision_encoder as"):
        Zero123PlusPipeline.from_pretrained(folder)
    index["vision_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    index["ramping_coefficients"] = index["ramping_coefficients"][:50]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="77 ramping_coefficients"):
        Zero123PlusPipeline.from_pretrained(folder)


def test_download_selects_one_weights_format_per_component():
    repo = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
        "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "inference.py",
    ]
    files = ZERO123PP_LAYOUT.files_to_fetch(repo)
    assert "unet/diffusion_pytorch_model.safetensors" in files and "unet/diffusion_pytorch_model.bin" not in files
    assert "vae/diffusion_pytorch_model.bin" in files
    assert {"text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors"} <= set(
        files
    )
    assert "text_encoder/pytorch_model.bin" not in files and "inference.py" not in files
    assert "tokenizer/merges.txt" in files and "model_index.json" in files


def test_the_controlnet_layout_is_the_hub_one(tiny_zero123pp):
    assert CONTROLNET_LAYOUT.missing(tiny_zero123pp / "normal_controlnet") == []
    assert resolve_model(tiny_zero123pp / "normal_controlnet", layout=CONTROLNET_LAYOUT).name == "normal_controlnet"
    assert "controlnet" in NORMAL_CONTROLNET
