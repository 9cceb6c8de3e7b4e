"""Reconstruction quality on imperfect views: the fit and the plain visual hull, per mesh, at several strengths.

For each test mesh: oracle views (recon.evaluation.oracle) → imperfect views at each ``--strengths`` value
(recon.evaluation.imperfections: misregistration, local inconsistency, photometric shifts, lost detail, noise,
silhouette artefacts, drawn per view from ``--seed``; ``--families`` keeps only some) → the 3x2 RGB grid, read back
the way ``img2mesh recon GRID`` reads it (masks derived from the gray background; ``--masks alpha`` hands over the
imperfect alpha instead) → the fit (recon.reconstruct with ``--config`` and ``--set``, seeded like the CLI) and the
visual hull (recon.evaluation.hull_baseline) → Chamfer, F@0.02, F@0.05 and novel-view PSNR (recon.evaluation.metrics)
per mesh, with a mean per method and strength. Strength 0 is the clean grid, read back the same way.

The issue's GPU table (default preset, all 11 test meshes, strengths 0 0.5 1 2, fit and hull; one H100/H200), run
from the repository root:

    python benchmarks/recon_robustness.py --device cuda --tables-dir OUT

Others:

    python benchmarks/recon_robustness.py --device cpu --config cpu --meshes duck spot --strengths 0 1
    python benchmarks/recon_robustness.py --device cuda --families misregistration --strengths 1   # one family
    python benchmarks/recon_robustness.py --device cuda --families misregistration photometric detail noise
    python benchmarks/recon_robustness.py --device cuda --set recon.iterations=[400,400] --methods fit
    python benchmarks/recon_robustness.py --smoke      # CI: one small mesh on the CPU, strengths 0 and 1

``--methods truth`` scores the ground truth itself, moved by the similarity that the views' misregistration and
inconsistency imply jointly (``implied_placement``; at strength 0 it is the ground truth, whose PSNR is infinite):
what placement alone costs the novel-view PSNR, which no reconstruction of these views can recover, since six views
each a little off agree on that part of their error.

``--families misregistration photometric detail noise`` is the model the issue first measured with (no local
inconsistency, no silhouette artefacts); all six families at the same strength are harsher.

The summary table lists the mean of each method and strength; the second table every mesh. With ``--tables-dir``
both are written to ``<dir>/recon_robustness.md`` after every mesh, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh_set import MESHES, machine, mesh_paths, score  # noqa: E402  (benchmarks/, the script's folder)

from img2mesh.commands.options import parse_set_values  # noqa: E402
from img2mesh.config import load_config  # noqa: E402
from recon.evaluation.hull_baseline import visual_hull  # noqa: E402
from recon.evaluation.imperfections import (  # noqa: E402
    FAMILIES,
    ImperfectionConfig,
    as_user_views,
    imperfect_views,
    implied_placement,
)
from recon.evaluation.oracle import load_mesh, oracle_views  # noqa: E402
from recon.reconstruct import reconstruct  # noqa: E402

METHODS = ("fit", "hull", "truth")
METRICS = ("chamfer", "fscore@0.02", "fscore@0.05", "psnr")
#: The CI smoke run: one small mesh, the CPU preset made smaller still, strengths 0 and 1.
SMOKE = {
    "meshes": ["duck"],
    "strengths": [0.0, 1.0],
    "config": "cpu",
    "set": {
        "recon.iterations": [40, 40],
        "recon.resolutions": [24, 32],
        "recon.image_size": 64,
        "recon.rays": 512,
        "recon.samples": 24,
        "recon.hull_resolution": 48,
        "recon.colour_resolution": 24,
        "mesh.faces": 1500,
        "texture.size": 64,
    },
    "hull_resolution": 48,
}


def main(argv: list[str] | None = None) -> dict[tuple[str, float, str], dict[str, float]]:
    """Run the benchmark; returns its rows, keyed by (method, strength, mesh)."""
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.commit = _commit()  # the code that runs, not whatever the checkout holds when the tables are written
    overrides = parse_set_values(args.set or [])
    if args.smoke:
        args.meshes, args.strengths, args.config = SMOKE["meshes"], SMOKE["strengths"], SMOKE["config"]
        args.device, args.hull_resolution = "cpu", SMOKE["hull_resolution"]
        overrides = {**SMOKE["set"], **overrides}
    settings = load_config(args.config, overrides)
    families = tuple(args.families) if args.families else FAMILIES
    rows: dict[tuple[str, float, str], dict[str, float]] = {}
    warm = not args.device.startswith("cuda")
    for path in mesh_paths(args.meshes, args.meshes_dir):
        gt = load_mesh(path)
        clean = oracle_views(gt, device=args.device).views
        for strength in args.strengths:
            config = ImperfectionConfig(strength=strength, families=families)
            imperfect = imperfect_views(clean, config, seed=args.seed)
            views = as_user_views(imperfect, settings.views)
            if args.masks == "alpha":
                views.masks = imperfect.masks
            if not warm:  # CUDA context, allocator and kernel choice are paid once, outside the timings
                reconstruct(views, settings.recon, settings.mesh, settings.texture, device=args.device, progress=False)
                warm = True
            for method in args.methods:
                start = time.perf_counter()
                if method == "fit":
                    mesh = reconstruct(
                        views,
                        settings.recon,
                        settings.mesh,
                        settings.texture,
                        device=args.device,
                        progress=False,
                        seed=settings.runtime.seed,
                    ).mesh
                elif method == "hull":
                    mesh = visual_hull(views, resolution=args.hull_resolution)
                else:
                    mesh = gt.copy()
                    mesh.apply_transform(implied_placement(clean, config, args.seed))
                seconds = time.perf_counter() - start
                row = {**score(mesh, gt, args.device, "lit" if method == "truth" else "unlit"), "seconds": seconds}
                rows[method, strength, path.stem] = row
                shown = {k: round(row[k], 4) for k in (*METRICS, "seconds")}
                print(method, strength, path.stem, shown, flush=True)
        if args.tables_dir:  # after every mesh, so that a run cut short keeps its tables
            _write(rows, args, print_it=False)
    _write(rows, args, print_it=True)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshes-dir", type=Path, default=MESHES)
    parser.add_argument("--meshes", nargs="*", help="mesh file stems, measured in this order (default: all)")
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, help="imperfection families on (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the imperfections")
    parser.add_argument("--config", default=None, help="preset name or YAML path (default: the default preset)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, as the CLI's --set")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=["fit", "hull"], help="truth: see the module docstring"
    )
    parser.add_argument(
        "--masks",
        choices=("grid", "alpha"),
        default="grid",
        help="grid: masks derived from the RGB grid, as a user's run does; alpha: the imperfect alpha itself",
    )
    parser.add_argument("--hull-resolution", type=int, default=128, help="voxel grid of the visual hull")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tables-dir", type=Path, help="also write the tables to <dir>/recon_robustness.md")
    parser.add_argument("--smoke", action="store_true", help=f"CI mode on the CPU: {SMOKE}")
    return parser


def _write(rows: dict[tuple[str, float, str], dict[str, float]], args: argparse.Namespace, print_it: bool) -> None:
    """The header line, the summary (means) and the per-mesh table; printed and/or written to ``--tables-dir``."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/recon_robustness.py " + " ".join(args.argv)
    header = (
        f"{machine(args.device)}, torch {torch.__version__}, commit {args.commit}, {date}, config "
        f"{args.config or 'default'}, masks {args.masks}, seed {args.seed}, command: `{command}`"
    )
    text = f"{header}\n\n{summary_table(rows)}\n\n{mesh_table(rows)}\n"
    if print_it:
        print("\n" + text)
    if args.tables_dir:
        args.tables_dir.mkdir(parents=True, exist_ok=True)
        (args.tables_dir / "recon_robustness.md").write_text(text)


def summary_table(rows: dict[tuple[str, float, str], dict[str, float]]) -> str:
    """Markdown: one row per method and strength, the mean over meshes of each metric and of the seconds."""
    lines = ["| method | strength | meshes | Chamfer | F@0.02 | F@0.05 | PSNR dB | s |", "|" + " --- |" * 8]
    for method, strength in dict.fromkeys((m, s) for m, s, _ in rows):
        group = [row for (m, s, _), row in rows.items() if (m, s) == (method, strength)]
        means = {k: float(np.mean([row[k] for row in group])) for k in (*METRICS, "seconds")}
        lines.append(f"| {method} | {strength:g} | {len(group)} | " + _cells(means) + " |")
    return "\n".join(lines)


def mesh_table(rows: dict[tuple[str, float, str], dict[str, float]]) -> str:
    """Markdown: one row per method, strength and mesh."""
    lines = ["| method | strength | mesh | Chamfer | F@0.02 | F@0.05 | PSNR dB | s |", "|" + " --- |" * 8]
    for (method, strength, mesh), row in sorted(rows.items(), key=lambda item: item[0]):
        lines.append(f"| {method} | {strength:g} | {mesh} | " + _cells(row) + " |")
    return "\n".join(lines)


def _cells(row: dict[str, float]) -> str:
    chamfer, f02, f05, psnr, seconds = (row[k] for k in (*METRICS, "seconds"))
    return f"{chamfer:.4f} | {f02:.3f} | {f05:.3f} | {psnr:.2f} | {seconds:.1f}"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
