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


#: The libraries of the diffusion half (and the compiler) that ``img2mesh recon`` has no use for.
NOT_FOR_RECON = ("diffusers", "transformers", "peft", "rembg", "onnxruntime", "torch._dynamo", "sympy", "scipy.stats")

#: Runs ``main()`` as the console script does; reports at exit which of ``NOT_FOR_RECON`` were imported, and whether
#: the interpreter's teardown ran (a module global's ``__del__``, which only the teardown calls).
RECON_PROBE = """
import atexit, json, sys
from img2mesh.cli import main

class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)

kept = Teardown()
atexit.register(lambda: print(json.dumps(sorted(m for m in %r if m in sys.modules)), flush=True))
sys.argv[0] = "img2mesh"
main()
"""


def test_recon_imports_no_diffusion_library_and_skips_the_teardown(tmp_path: Path) -> None:
    """A whole ``img2mesh recon`` run (tiny settings) loads none of diffusers, transformers, peft, rembg or the
    compiler, and its process ends without the interpreter's teardown (``img2mesh.cli.fast_exit``), its ``atexit``
    handlers run and its mesh complete."""
    from stage_settings import TINY

    grid = Path(__file__).resolve().parents[2] / "examples" / "spot_views.png"
    args = ["recon", str(grid), "--config", "cpu", "--export", str(tmp_path / "spot.glb"), "--quiet"]
    for key, value in TINY.items():
        if key.startswith(("recon.", "mesh.", "texture.")):
            args += ["--set", f"{key}={json.dumps(value)}"]
    result = subprocess.run(
        [sys.executable, "-c", RECON_PROBE % (NOT_FOR_RECON,), *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["[]"]  # the atexit handler's report; no "teardown ran"
    assert (tmp_path / "spot.glb").stat().st_size > 1000


FAST_EXIT_PROBE = """
import atexit, sys, threading
from img2mesh.cli import fast_exit

atexit.register(print, "; atexit ran")
if sys.argv[1] == "profiled":
    sys.setprofile(lambda *args: None)
elif sys.argv[1] == "thread":
    release = threading.Event()
    threading.Thread(target=release.wait).start()
print("work done", end="")  # left in the buffer: fast_exit flushes it
fast_exit(3)
sys.setprofile(None)
print(" then returned")
if sys.argv[1] == "thread":
    release.set()
"""


@pytest.mark.parametrize(
    ("case", "code", "output"),
    [
        ("plain", 3, "work done; atexit ran\n"),
        ("profiled", 0, "work done then returned\n; atexit ran\n"),  # a profiler writes its results after main()
        ("thread", 0, "work done then returned\n; atexit ran\n"),  # the interpreter would wait for the thread
    ],
)
def test_fast_exit_runs_the_atexit_handlers_and_steps_aside_when_it_must(case: str, code: int, output: str) -> None:
    result = subprocess.run([sys.executable, "-c", FAST_EXIT_PROBE, case], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (code, output), result.stderr
