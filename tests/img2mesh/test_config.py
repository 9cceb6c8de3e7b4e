"""The config loader: defaults, presets, and a sentence naming the key for every bad file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from img2mesh.config import (
    PRESETS_DIR,
    Img2MeshConfig,
    config_to_dict,
    default_yaml,
    field_docstrings,
    load_config,
)
from img2mesh.errors import InputError

REGENERATE = "configs/default.yaml is stale; regenerate it with `python -m img2mesh.config > configs/default.yaml`"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my.yaml"
    path.write_text(text)
    return path


def test_default_yaml_spells_out_every_default() -> None:
    shipped = (PRESETS_DIR / "default.yaml").read_text()
    assert yaml.safe_load(shipped) == config_to_dict(Img2MeshConfig()), REGENERATE
    assert shipped == default_yaml(), REGENERATE
    assert load_config("default") == Img2MeshConfig()


def test_every_field_has_a_docstring() -> None:
    config = Img2MeshConfig()
    for cls in [Img2MeshConfig, *(type(getattr(config, f.name)) for f in dataclasses.fields(config))]:
        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docstrings(cls))
        assert not missing, f"{cls.__name__} fields without a docstring: {sorted(missing)}"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_preset_loads(preset: str) -> None:
    assert isinstance(load_config(preset), Img2MeshConfig)


def test_file_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "multiview:\n  steps: 30\n  guidance: 3\nruntime:\n  seed: 7\n")
    config = load_config(path, {"multiview.steps": 12, "views.poses": "v1.1"})
    assert config.multiview.steps == 12  # the override wins over the file
    assert config.multiview.guidance == 3.0 and isinstance(config.multiview.guidance, float)
    assert config.runtime.seed == 7 and config.views.poses == "v1.1"
    assert config.recon == Img2MeshConfig().recon  # untouched sections keep their defaults


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("multiview:\n  stepz: 3\n", "Unknown config key 'multiview.stepz'"),
        ("multivew:\n  steps: 3\n", "Unknown config key 'multivew'"),
        ("runtime:\n  seed: forty\n", "'runtime.seed' in .* is 'forty'; it must be of type int"),
        ("runtime:\n  seed: true\n", "'runtime.seed' .* must be of type int"),
        ("multiview:\n  guidance: high\n", "'multiview.guidance' .* must be of type float"),
        ("runtime:\n  device: tpu\n", "'runtime.device' .* is 'tpu'; choose one of auto, cuda, mps, cpu"),
        ("preprocess:\n  remove_bg: maybe\n", "'preprocess.remove_bg' .* choose one of auto, rembg, none"),
        ("runtime: fast\n", "'runtime' .* must be a mapping"),
        ("- 1\n- 2\n", "must be a mapping of sections"),
        ("runtime: {seed: 1\n", "is not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=expected) as error:
        load_config(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(InputError, match=r"neither a file nor a preset; use a YAML path or one of: .*default"):
        load_config("no-such-preset")
