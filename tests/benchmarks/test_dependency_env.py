"""benchmarks/dependency_env.py: a venv of img2mesh's installed dependencies only, for cold calls as an install runs."""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from dependency_env import dependency_env, requirement_closure  # noqa: E402


def test_closure_follows_requirements_and_names_what_is_missing():
    found, missing = requirement_closure(["diffusers", "no-such-distribution-img2mesh-test"])
    assert {"diffusers", "huggingface-hub", "safetensors"} <= set(found)  # diffusers' own requirements, transitively
    assert missing == {"no-such-distribution-img2mesh-test"}
    assert "peft" not in found  # diffusers does not require it, though it imports it when present


def test_closure_follows_what_an_extra_adds():
    # rembg[cpu] adds onnxruntime (rembg alone does not require it), also when rembg was reached without it first
    assert "onnxruntime" not in requirement_closure(["rembg"])[0]
    assert "onnxruntime" in requirement_closure(["rembg", "rembg[cpu]"])[0]
    assert "onnxruntime" in requirement_closure(["rembg[cpu]", "rembg"])[0]


def test_env_holds_the_dependencies_and_not_the_optional_packages_this_machine_has(tmp_path):
    metadata.version("peft")  # installed here by the test extra: what the venv must hide
    python, linked, missing = dependency_env(tmp_path / "venv")
    assert {"diffusers", "transformers", "torch", "trimesh", "click"} <= set(linked)
    assert "peft" not in linked and not missing
    probe = "import importlib.util as u; print(u.find_spec('peft') is None, u.find_spec('diffusers') is not None)"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
