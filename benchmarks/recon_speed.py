"""Reconstruction stage times (PosedViews → exported GLB) and quality on oracle views, one row per mesh.

The issue's speed bar is "default preset ≤ 10 s from PosedViews to exported GLB on one H100"; this script measures
exactly that span, split into the stages of :func:`recon.reconstruct.reconstruct` (hull, fitting per grid stage,
marching cubes + clean-up, UV unwrap, bake) plus the GLB export, after one warm-up reconstruction (CUDA context,
kernel selection). Quality columns (Chamfer, F-scores, novel-view PSNR) use recon.evaluation.metrics like
``benchmarks/recon_quality.py``, which remains the full yardstick (it adds volume IoU and SSIM).

    python benchmarks/recon_speed.py --device cuda                       # default preset, every test mesh
    python benchmarks/recon_speed.py --device cpu --config cpu --meshes spot duck
    python benchmarks/recon_speed.py --device cuda --normals            # oracle normal maps too (normal term on)
    python benchmarks/recon_speed.py --device cuda --config default mine.yaml --tables-dir out   # A/B, one table each

Several ``--config`` values are measured in one process on the same oracle views, mesh by mesh (each config warmed
up once first), so that an A/B shares the machine; each config's table is printed and, with ``--tables-dir``, written
to ``<dir>/<config stem>.md``.

``--fields-dir DIR`` times the CPU half alone (marching cubes and clean-up, UV unwrap, bake, GLB export) from fitted
fields saved in DIR (``<mesh>/grid.pt`` and ``<mesh>/views``; fitted with ``--config`` on ``--device`` and saved
when missing), so the finishing can be measured and tuned on any machine, as often as needed, from the fields of the
real preset. Its table adds the process CPU seconds of the whole finish and the UV atlas checks of
:func:`recon.evaluation.mesh_checks.atlas_report` (charts, texel coverage, overlapping texels, fewest texels between
charts).

    python benchmarks/recon_speed.py --device cuda --fields-dir fields --no-quality   # fit and save once (GPU)
    python benchmarks/recon_speed.py --fields-dir fields --threads 1                  # finishing times (CPU)
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh_set import MESHES, mesh_paths, score  # noqa: E402  (benchmarks/, the script's folder)

from img2mesh.config import load_config  # noqa: E402
from recon.evaluation.mesh_checks import atlas_report  # noqa: E402
from recon.evaluation.metrics import novel_view_metrics  # noqa: E402
from recon.evaluation.oracle import load_mesh, oracle_views  # noqa: E402
from recon.export import export_mesh  # noqa: E402
from recon.fit import Fields, fit_fields  # noqa: E402
from recon.posed_views import PosedViews  # noqa: E402
from recon.reconstruct import finish_mesh, reconstruct  # noqa: E402
from recon.sdf_grid import Box, SdfGrid  # noqa: E402

STAGES = ("hull", "fit", "mesh", "unwrap", "bake", "export", "total")
METRICS = ("chamfer", "fscore@0.02", "fscore@0.05", "precision@0.05", "recall@0.05", "psnr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshes-dir", type=Path, default=MESHES)
    parser.add_argument("--meshes", nargs="*", help="mesh file stems, measured in this order (default: all)")
    parser.add_argument(
        "--config", nargs="+", default=[None], help="preset names or YAML paths (default: the dataclass defaults)"
    )
    parser.add_argument("--tables-dir", type=Path, help="also write each config's table to <dir>/<config stem>.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-quality", action="store_true", help="times only")
    parser.add_argument("--fields-dir", type=Path, help="finishing mode: time the CPU half from fields saved here")
    parser.add_argument("--bake-device", default="cpu", help="finishing mode: device of the texel bake")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--save-meshes", type=Path, help="also write each reconstruction's geometry here (<mesh>.ply)")
    parser.add_argument(
        "--normals", action="store_true", help="give the views the meshes' exact normal maps (the normal ControlNet's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fields_dir:
        finishing(args)
        return

    configs = {_config_name(name): load_config(name) for name in args.config}
    paths = mesh_paths(args.meshes, args.meshes_dir)
    rows: dict[str, dict[str, dict[str, float]]] = {name: {} for name in configs}
    warmed: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            gt = load_mesh(path)
            views = oracle_views(gt, device=args.device, normals=args.normals).views
            for name, settings in configs.items():
                if name not in warmed:  # CUDA context, allocator and kernel selection are paid once per config
                    reconstruct(
                        views, settings.recon, settings.mesh, settings.texture, device=args.device, progress=False
                    )
                    warmed.add(name)
                row = _measure(views, gt, path.stem, settings, args, Path(tmp), name)
                rows[name][path.stem] = row
                print(name, path.stem, {k: round(float(v), 4) for k, v in row.items()}, flush=True)
            if args.tables_dir:  # after every mesh, so that a run cut short still leaves its tables
                _write_tables(rows, args, print_them=False)
    _write_tables(rows, args, print_them=True)


def _write_tables(rows: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace, print_them: bool) -> None:
    """Each config's table, printed and/or written to ``args.tables_dir``."""
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/recon_speed.py " + " ".join(sys.argv[1:])
    for name, config_rows in rows.items():
        table = _table(config_rows, [] if args.no_quality else list(METRICS))
        text = f"{device}, torch {torch.__version__}, {date}, config {name}, command: {command}\n\n{table}\n"
        if print_them:
            print("\n" + text)
        if args.tables_dir:
            args.tables_dir.mkdir(parents=True, exist_ok=True)
            (args.tables_dir / f"{name}.md").write_text(text)


def _config_name(name: str | None) -> str:
    return "defaults" if name is None else Path(name).stem


def _measure(
    views: PosedViews, gt, stem: str, settings, args: argparse.Namespace, tmp: Path, name: str
) -> dict[str, float]:
    """One timed reconstruction (PosedViews → GLB) of ``views`` with ``settings``, and its quality against ``gt``."""
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = reconstruct(views, settings.recon, settings.mesh, settings.texture, device=args.device, progress=False)
    mid = time.perf_counter()
    export_mesh(result.mesh, tmp / f"{stem}.glb")
    end = time.perf_counter()
    row = dict(result.timings)
    row["export"] = end - mid
    row["total"] = end - start
    row["faces"] = len(result.mesh.faces)
    if args.save_meshes:
        folder = args.save_meshes / name if len(args.config) > 1 else args.save_meshes
        folder.mkdir(parents=True, exist_ok=True)
        trimesh.Trimesh(result.mesh.vertices, result.mesh.faces).export(folder / f"{stem}.ply")
    if not args.no_quality:
        row.update(score(result.mesh, gt, args.device))
    return row


def _table(rows: dict[str, dict[str, float]], metrics: list[str]) -> str:
    """Markdown table of one config's rows (a mean row last)."""
    fit_keys = sorted({k for row in rows.values() for k in row if k.startswith("fit_")}, key=lambda k: int(k[4:]))
    stages = ["hull", *fit_keys, "mesh", "unwrap", "bake", "export", "total"]
    header = ["mesh", "faces", *metrics, *(f"{s} s" for s in stages)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    means = {k: float(np.mean([r[k] for r in rows.values()])) for k in ["faces", *metrics, *stages]}
    for name, row in [*rows.items(), ("**mean**", means)]:
        cells = [f"{row['faces']:.0f}"]
        cells += [f"{row[m]:.4f}" if m == "chamfer" else f"{row[m]:.3f}" for m in metrics]
        cells += [f"{row[s]:.2f}" for s in stages]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finishing(args: argparse.Namespace) -> None:
    """Stage times of :func:`recon.reconstruct.finish_mesh` and the GLB export from saved fields, one row per mesh."""
    settings = load_config(args.config[0])
    paths = mesh_paths(args.meshes, args.meshes_dir)
    rows: dict[str, dict[str, float]] = {}
    for path in paths:
        gt = load_mesh(path)
        fields, views = saved_fields(args.fields_dir / path.stem, gt, settings.recon, args.device)
        finish_mesh(fields, views, settings.mesh, settings.texture, device=args.bake_device)  # warm-up
        timings: dict[str, float] = {}
        cpu = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            mesh = finish_mesh(fields, views, settings.mesh, settings.texture, timings, device=args.bake_device)
            mid = time.perf_counter()
            export_mesh(mesh, Path(tmp) / f"{path.stem}.glb")
            timings["export"] = time.perf_counter() - mid
            timings["total"] = time.perf_counter() - start
        timings["cpu"] = time.process_time() - cpu
        report = atlas_report(np.asarray(mesh.visual.uv), mesh.faces, settings.texture.size)
        row = {**timings, "faces": len(mesh.faces), **vars(report)}
        if not args.no_quality:
            row.update(novel_view_metrics(mesh, gt, device=args.bake_device))
        rows[path.stem] = row
        print(path.stem, {k: round(float(v), 4) for k, v in row.items()}, flush=True)

    metrics = [] if args.no_quality else ["psnr"]
    stages = ["mesh", "unwrap", "bake", "export", "total", "cpu"]
    header = ["mesh", "faces", "charts", "coverage", "overlap", "gap", *metrics, *(f"{s} s" for s in stages)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    keys = ["faces", "charts", "coverage", "overlap", "gap", *metrics, *stages]
    means = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
    for name, row in [*rows.items(), ("**mean**", means)]:
        cells = [f"{row[k]:.0f}" for k in ("faces", "charts")] + [f"{row['coverage']:.3f}"]
        cells += [f"{row[k]:.0f}" for k in ("overlap", "gap")] + [f"{row[m]:.2f}" for m in metrics]
        cells += [f"{row[s]:.2f}" for s in stages]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/recon_speed.py " + " ".join(sys.argv[1:])
    cpus = len(os.sched_getaffinity(0))
    print(f"\nCPU finishing, {cpus} CPUs, torch threads {torch.get_num_threads()}, {date}, command: {command}")
    print("\n".join(lines))


def saved_fields(folder: Path, gt, recon, device: str) -> tuple[Fields, PosedViews]:
    """The fitted fields and oracle views saved in ``folder``; fitted and saved first when absent."""
    if not (folder / "grid.pt").is_file():
        views = oracle_views(gt, device=device).views
        grid = fit_fields(views, recon, device=device, progress=False).grid
        views.save(folder / "views")
        saved = {"sdf": grid.sdf.detach(), "colour": grid.colour.detach(), "lo": grid.box.lo, "hi": grid.box.hi}
        torch.save({k: v.cpu() for k, v in saved.items()}, folder / "grid.pt")
    data = torch.load(folder / "grid.pt")
    grid = SdfGrid(data["sdf"], data["colour"], Box(data["lo"], data["hi"]))
    return Fields(grid), PosedViews.load(folder / "views")


if __name__ == "__main__":
    main()
