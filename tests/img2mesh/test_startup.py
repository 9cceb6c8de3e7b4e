"""The command line answers ``--help`` without loading torch, diffusers, numpy or trimesh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from img2mesh.cli import COMMANDS

#: Modules whose import takes seconds (torch, diffusers, trimesh) or more than the rest of start-up (numpy).
HEAVY = ("torch", "diffusers", "transformers", "numpy", "trimesh", "pyvista", "rembg")

PROBE = """
import json, sys
from img2mesh.cli import cli
try:
    cli(sys.argv[1:], prog_name="img2mesh")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
"""


@pytest.mark.parametrize("args", [["--help"], *([name, "--help"] for name in COMMANDS)], ids=" ".join)
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}
    assert "Usage: img2mesh" in result.stdout


@pytest.mark.parametrize("module", ["img2mesh", "img2mesh.cli"])
def test_python_dash_m_runs_the_command_line(module: str) -> None:
    """``python -m img2mesh`` is the command line; so is ``python -m img2mesh.cli``, whose module guards ``main()``."""
    from img2mesh import __version__

    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, f"img2mesh, version {__version__}\n")
    # An option error goes through the same entry point: one sentence, exit status 2.
    result = subprocess.run([sys.executable, "-m", module, "recon", "--faces"], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, "Error: Option '--faces' requires an argument.\n")


def test_views_refuses_its_output_folder_without_mesh_libraries(tmp_path) -> None:
    """``img2mesh views`` writes no mesh: its output check must not import trimesh (and networkx with it), a cost
    every cold ``views`` call paid when the check lived in recon.export."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    photo = Path(__file__).resolve().parents[2] / "examples" / "photos" / "spot.png"
    args = ["views", str(photo), "-o", str(blocker / "out")]
    result = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args], capture_output=True, text=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 2
    assert "is inside a file" in result.stderr
    assert "trimesh" not in report["heavy"]
