"""The config loader: defaults, presets, and a sentence naming the key for every bad file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from img2mesh.commands.options import parse_set_values
from img2mesh.config import (
    Img2MeshConfig,
    config_to_dict,
    default_yaml,
    field_docstrings,
    load_config,
    presets_dir,
)
from img2mesh.errors import InputError

REGENERATE = "configs/default.yaml is stale; regenerate it with `python -m img2mesh.config > configs/default.yaml`"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my.yaml"
    path.write_text(text)
    return path


def test_default_yaml_spells_out_every_default() -> None:
    shipped = (presets_dir() / "default.yaml").read_text()
    assert yaml.safe_load(shipped) == config_to_dict(Img2MeshConfig()), REGENERATE
    assert shipped == default_yaml(), REGENERATE
    assert load_config("default") == Img2MeshConfig()


def test_every_field_has_a_docstring() -> None:
    config = Img2MeshConfig()
    for cls in [Img2MeshConfig, *(type(getattr(config, f.name)) for f in dataclasses.fields(config))]:
        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docstrings(cls))
        assert not missing, f"{cls.__name__} fields without a docstring: {sorted(missing)}"


@pytest.mark.parametrize("preset", sorted(p.stem for p in presets_dir().glob("*.yaml")))
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
        ("runtime:\n  seed: forty\n", "'runtime.seed' is 'forty' \\(set by .*my.yaml\\); it must be of type int"),
        ("runtime:\n  seed: true\n", "'runtime.seed' .* must be of type int"),
        ("multiview:\n  guidance: high\n", "'multiview.guidance' .* must be of type float"),
        ("runtime:\n  device: tpu\n", "'runtime.device' is 'tpu' .*; choose one of auto, cuda, mps, cpu"),
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


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"mesh.faces": 0}, "'mesh.faces' is 0 .*; use at least 200"),
        ({"mesh.faces": -5}, "'mesh.faces' is -5 .*; use at least 200"),
        ({"texture.size": 3}, "'texture.size' is 3 .*; use a power of two from 64 to 8192"),
        ({"texture.size": 1000}, "'texture.size' is 1000 .*; use a power of two"),
        ({"texture.size": 16384}, "'texture.size' is 16384 .*; use a power of two"),
        ({"recon.iterations": [100]}, "'recon.iterations' is \\[100\\] .*; give one count per stage"),
        ({"recon.device": "tpu"}, "'recon.device' is 'tpu' .*; use auto, cuda, cuda:N or cpu"),
        ({"runtime.seed": -1}, "'runtime.seed' is -1 .*; use a value from 0 to"),
        ({"preprocess.object_share": 1.5}, "'preprocess.object_share' is 1.5 .*; use a share in"),
    ],
)
def test_values_out_of_range_fail_while_loading(overrides: dict, expected: str) -> None:
    with pytest.raises(InputError, match=expected) as error:
        load_config("cpu", overrides)
    key = next(iter(overrides))
    assert f"(set by the override {key})" in str(error.value) and "\n" not in str(error.value)


def test_errors_name_where_the_value_was_set(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'mesh.faces' is 7 \(set by --set mesh.faces=7\)"):
        load_config("cpu", {"mesh.faces": 7}, sources={"mesh.faces": "--set mesh.faces=7"})
    with pytest.raises(InputError, match=r"'texture.size' is 100 \(set by .*my.yaml\)"):
        load_config(write(tmp_path, "texture:\n  size: 100\n"))
    with pytest.raises(InputError, match=r"Unknown config key 'mesh.face' \(set by --set mesh.face=3\)"):
        load_config("cpu", {"mesh.face": 3}, sources={"mesh.face": "--set mesh.face=3"})


def test_edges_of_the_ranges_load() -> None:
    config = load_config(None, {"mesh.faces": 200, "texture.size": 64})
    assert (config.mesh.faces, config.texture.size) == (200, 64)
    assert load_config(None, {"texture.size": 8192}).texture.size == 8192


def test_set_values_parse_as_yaml_and_a_malformed_one_is_one_sentence() -> None:
    assert parse_set_values(["mesh.faces=5000", "export.lods=[5000, 1000]"]) == {
        "mesh.faces": 5000,
        "export.lods": [5000, 1000],
    }
    assert parse_set_values(["validate_every=100"], sections=False) == {"validate_every": 100}
    with pytest.raises(InputError, match=r"must look like SECTION\.KEY=VALUE, e\.g\. --set mesh\.faces=5000\.$"):
        parse_set_values(["faces=5000"])
    with pytest.raises(InputError, match=r"must look like KEY=VALUE, e\.g\. --set validate_every=100\.$"):
        parse_set_values([" =3"], sections=False)
    with pytest.raises(InputError, match="not valid YAML"):
        parse_set_values(["mesh.faces=[1"])
