"""Fixtures of the training tests: a tiny model that trains fast on the CPU, and training pairs of two test meshes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

MESHES = Path(__file__).resolve().parents[2] / "data" / "meshes"
#: Files of the two test meshes trained on (an OBJ with its material and texture, and a GLB).
MESH_FILES = ("duck.glb", "spot.obj", "spot.mtl", "spot.png")


def copy_meshes(folder: Path) -> Path:
    """The two training meshes copied into ``folder`` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MESH_FILES:
        shutil.copy(MESHES / name, folder / name)
    return folder


@pytest.fixture
def training_meshes(tmp_path: Path) -> Path:
    """A folder holding copies of the two training meshes."""
    return copy_meshes(tmp_path / "meshes")


@pytest.fixture(scope="session")
def small_model(tiny_zero123pp, tmp_path_factory) -> Path:
    """The tiny random model with a 64-px condition input for the VAE (its feature extractor's size), so the
    reference pass runs on 8x8 latents and a training step costs a fraction of a second on one CPU core."""
    folder = tmp_path_factory.mktemp("train_model") / "tiny-zero123plus-v1.2"
    shutil.copytree(tiny_zero123pp, folder, ignore=shutil.ignore_patterns("normal_controlnet"))
    path = folder / "feature_extractor_vae" / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config.update(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> Path:
    """train-data of duck and spot: 2 conditions each, 64-px views (grids 128 wide, 192 tall), 64-px conditions."""
    from img2mesh.train.config import TrainDataConfig
    from img2mesh.train.data import render_training_data

    root = tmp_path_factory.mktemp("train_pairs")
    config = TrainDataConfig(conditions=2, view_size=64, condition_size=64, supersample=1, device="cpu")
    render_training_data(copy_meshes(root / "meshes"), root / "data", config, progress=False)
    return root / "data"
