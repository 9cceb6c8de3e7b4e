"""Reconstruction quality on oracle views of every test mesh: the yardstick of the reconstruction stage.

For each mesh of ``tests/data/meshes`` (loaded with its textures, normalised, world z-up; recon.evaluation.oracle):
render the exact Zero123++ v1.2 views ("oracle views", as if the diffusion model were perfect), reconstruct from the
six views with their exact alpha, and compare with the mesh (recon.evaluation.metrics: Chamfer, F-score at
0.02 / 0.05, volume IoU on 64^3, PSNR / SSIM of 12 novel views). Prints one row per mesh and a mean row, with
seconds per stage, and writes the table into ``benchmarks/RESULTS.md`` (its own section, replaced on a rerun of
the same method and device).

    .venv/bin/python benchmarks/recon_quality.py --method hull                 # the visual-hull floor
    .venv/bin/python benchmarks/recon_quality.py --method recon --device cuda --config fast
    .venv/bin/python benchmarks/recon_quality.py --meshes duck spot --no-write
    .venv/bin/python benchmarks/recon_quality.py --method recon --config cpu --normals   # with oracle normal maps

``--method recon`` runs ``recon.reconstruct.reconstruct`` with the recon / mesh / texture sections of ``--config``
(a preset name or YAML path, loaded by img2mesh.config).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh_set import machine, mesh_paths, score  # noqa: E402  (benchmarks/, the script's folder)
from results_file import RESULTS, replace_section  # noqa: E402

from recon.evaluation.hull_baseline import visual_hull  # noqa: E402
from recon.evaluation.metrics import volume_iou  # noqa: E402
from recon.evaluation.oracle import load_mesh, oracle_views  # noqa: E402

METRICS = ("chamfer", "fscore@0.02", "fscore@0.05", "iou", "psnr", "ssim")
STAGES = ("load", "oracle", "recon", "metrics")


def make_reconstructor(method: str, device: str, config: str | None, resolution: int):
    """A function views -> trimesh for the chosen method (recon is imported only when asked for)."""
    if method == "hull":
        return lambda views: visual_hull(views, resolution=resolution)
    from img2mesh.config import load_config
    from recon.reconstruct import reconstruct

    settings = load_config(config)

    def run(views):
        return reconstruct(views, settings.recon, settings.mesh, settings.texture, device=device, progress=False).mesh

    return run


def evaluate(path: Path, reconstructor, device: str, normals: bool = False) -> dict[str, float]:
    row: dict[str, float] = {}
    start = time.perf_counter()
    gt = load_mesh(path)
    row["load"] = time.perf_counter() - start
    start = time.perf_counter()
    views = oracle_views(gt, device=device, normals=normals).views
    row["oracle"] = time.perf_counter() - start
    start = time.perf_counter()
    pred = reconstructor(views)
    row["recon"] = time.perf_counter() - start
    start = time.perf_counter()
    row.update(score(pred, gt, device))
    row["iou"] = volume_iou(pred, gt)
    row["metrics"] = time.perf_counter() - start
    return row


def table(rows: dict[str, dict[str, float]]) -> str:
    columns = [*METRICS, *(f"{s} s" for s in STAGES)]
    lines = ["| mesh | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    good = {name: row for name, row in rows.items() if "error" not in row}
    rows = dict(rows)
    if good:
        rows["**mean**"] = {key: float(np.mean([row[key] for row in good.values()])) for key in (*METRICS, *STAGES)}
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} |" + " |" * (len(columns) - 1))
            continue
        cells = [
            f"{row[m]:.4f}" if m == "chamfer" else f"{row[m]:.2f}" if m == "psnr" else f"{row[m]:.3f}" for m in METRICS
        ]
        cells += [f"{row[s]:.1f}" for s in STAGES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(method: str, device: str, body: str) -> None:
    """Replace (or append) this method/device's section of RESULTS.md, leaving other sections alone."""
    kind = "cuda" if device.startswith("cuda") else device
    replace_section(f"<!-- recon_quality:{method}:{kind} -->", f"<!-- /recon_quality:{method}:{kind} -->", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("hull", "recon"), default="hull")
    parser.add_argument("--meshes", nargs="*", help="mesh names (file stems); default: all")
    parser.add_argument("--device", default="cpu", help="torch device for rendering and reconstruction")
    parser.add_argument("--config", default=None, help="preset name or YAML path for --method recon")
    parser.add_argument("--resolution", type=int, default=128, help="voxel grid of --method hull")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--normals", action="store_true", help="give the views the meshes' exact normal maps (own RESULTS section)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reconstructor = make_reconstructor(args.method, args.device, args.config, args.resolution)
    rows: dict[str, dict[str, float]] = {}
    for path in mesh_paths(args.meshes):
        try:
            rows[path.stem] = evaluate(path, reconstructor, args.device, args.normals)
        except Exception as error:  # one failing mesh must not hide the others' numbers
            rows[path.stem] = {"error": f"{type(error).__name__}: {error}".replace("|", "/")[:120]}
        print(
            path.stem, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[path.stem].items()}, flush=True
        )

    command = "python benchmarks/recon_quality.py " + " ".join(sys.argv[1:])
    detail = f"resolution {args.resolution}" if args.method == "hull" else f"config {args.config or 'default'}"
    method = f"{args.method}+normals" if args.normals else args.method
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"## Reconstruction quality: {method} ({detail}) on {args.device}\n\n"
        f"{machine(args.device)}, {date}. Command: `{command}`.\n"
        "Oracle views (Zero123++ v1.2 poses, 320 px, exact alpha) of each test mesh; Chamfer (lower is better) and\n"
        "F-score on meshes normalised to longest side 1; IoU on 64^3; PSNR/SSIM over 12 novel views (elevations 0\n"
        "and 40 degrees) on gray, ground truth lit, reconstruction unlit (recon/metrics.py). Seconds per stage.\n\n"
        f"{table(rows)}\n"
    )
    print()
    print(body)
    if not args.no_write:
        write_section(method, args.device, body)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
