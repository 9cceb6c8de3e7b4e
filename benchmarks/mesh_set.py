"""What the quality benchmarks share: the test meshes they run on, how a reconstruction is scored, the machine line."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from recon.evaluation.metrics import chamfer_fscore, novel_view_metrics

#: The meshes kept in the repository (tests/data/meshes), the default set of every quality benchmark.
MESHES = Path(__file__).resolve().parents[1] / "tests" / "data" / "meshes"
#: Mesh files a benchmark reads.
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply")


def mesh_paths(names: list[str] | None, meshes_dir: Path = MESHES) -> list[Path]:
    """The mesh files of ``meshes_dir``: all (sorted), or those named by stem, in the order given (so the first
    ones survive a run cut short); an unknown name stops the script with the list of known ones."""
    paths = sorted(p for p in meshes_dir.iterdir() if p.suffix.lower() in MESH_SUFFIXES)
    if not names:
        return paths
    by_stem = {p.stem: p for p in paths}
    missing = [Path(n).stem for n in names if Path(n).stem not in by_stem]
    if missing:
        raise SystemExit(f"unknown meshes: {', '.join(missing)} (have: {', '.join(by_stem)})")
    return [by_stem[Path(n).stem] for n in names]


def score(pred, gt, device: str = "cpu", pred_lighting: str = "unlit") -> dict[str, float]:
    """Chamfer, F-scores (with their precision and recall) and novel-view PSNR/SSIM of ``pred`` against ``gt``
    (``pred_lighting="lit"`` for a prediction with material colours rather than a baked texture)."""
    return {**chamfer_fscore(pred, gt), **novel_view_metrics(pred, gt, pred_lighting=pred_lighting, device=device)}


def machine(device: str) -> str:
    """The GPU's name, or the CPU's with its core count and load (wall times on a shared machine need the load)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {os.cpu_count()} cores, load average {load:.1f} at the end ({threads} torch threads)"
