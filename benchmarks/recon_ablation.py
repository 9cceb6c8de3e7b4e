"""Config variants side by side on the same imperfect views: which setting pays, in one process.

For each test mesh and strength, the imperfect views (``recon.evaluation.imperfections``, read back as a user's grid
is, as in ``recon_robustness.py``) are made once and fitted with every ``--variant``, each a name and ``--set``-style
overrides of ``--config``; the table gives the mean Chamfer, F@0.02, F@0.05, novel-view PSNR and seconds (warm,
posed views to textured mesh) of each variant and strength, then every mesh. ``--registered`` reads every view through
the inverse of its true displacement first (``registered_views``): what a perfect registration would give, the upper
bound of any registration.

    python benchmarks/recon_ablation.py --device cuda --strengths 1 \\
        --variant plain --variant "robust: recon.hull_dilation=3 recon.colour_compensation=true"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh_set import MESHES, machine, mesh_paths, score  # noqa: E402

from img2mesh.commands.options import parse_set_values  # noqa: E402
from img2mesh.config import load_config  # noqa: E402
from recon.evaluation.imperfections import (  # noqa: E402
    FAMILIES,
    ImperfectionConfig,
    as_user_views,
    imperfect_views,
    registered_views,
)
from recon.evaluation.oracle import load_mesh, oracle_views  # noqa: E402
from recon.reconstruct import reconstruct  # noqa: E402

METRICS = ("chamfer", "fscore@0.02", "fscore@0.05", "psnr", "seconds")


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name: key=value key=value"`` → (name, overrides)."""
    name, _, rest = text.partition(":")
    return name.strip(), parse_set_values(rest.split())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshes", nargs="*")
    parser.add_argument("--strengths", nargs="+", type=float, default=[1.0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES)
    parser.add_argument("--config", default=None)
    parser.add_argument("--variant", action="append", required=True, help='"name: key=value ..."')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--registered", action="store_true", help="undo each view's true displacement first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    families = tuple(args.families) if args.families else FAMILIES
    rows: dict[tuple[str, float, str], dict[str, float]] = {}
    warm = not args.device.startswith("cuda")
    for path in mesh_paths(args.meshes, MESHES):
        gt = load_mesh(path)
        clean = oracle_views(gt, device=args.device).views
        for strength in args.strengths:
            imperfection = ImperfectionConfig(strength=strength, families=families)
            imperfect = imperfect_views(clean, imperfection, args.seed)
            for name, overrides in variants:
                settings = load_config(args.config, overrides)
                views = as_user_views(imperfect, settings.views)
                if args.registered:
                    views = registered_views(views, imperfection, args.seed)
                config = (settings.recon, settings.mesh, settings.texture)
                if not warm:
                    reconstruct(views, *config, device=args.device, progress=False)
                    warm = True
                start = time.perf_counter()
                mesh = reconstruct(views, *config, device=args.device, progress=False, seed=settings.runtime.seed).mesh
                seconds = time.perf_counter() - start
                row = {**score(mesh, gt, args.device), "seconds": seconds}
                rows[name, strength, path.stem] = row
                shown = (*METRICS, "precision@0.02", "recall@0.02")
                print(name, strength, path.stem, {k: round(row[k], 4) for k in shown}, flush=True)
    registered = ", views registered through the truth" if args.registered else ""
    print(f"\n{machine(args.device)}, torch {torch.__version__}, families {' '.join(families)}{registered}\n")
    print("| variant | strength | meshes | Chamfer | F@0.02 | F@0.05 | PSNR dB | s |\n" + "|" + " --- |" * 8)
    for name, strength in dict.fromkeys((n, s) for n, s, _ in rows):
        group = [r for (n, s, _), r in rows.items() if (n, s) == (name, strength)]
        print(
            f"| {name} | {strength:g} | {len(group)} | " + cells({k: np.mean([r[k] for r in group]) for k in METRICS})
        )
    print("\n| variant | strength | mesh | Chamfer | F@0.02 | F@0.05 | PSNR dB | s |\n" + "|" + " --- |" * 8)
    for (name, strength, mesh), row in rows.items():
        print(f"| {name} | {strength:g} | {mesh} | " + cells(row))


def cells(row: dict[str, float]) -> str:
    chamfer, f02, f05, psnr, seconds = (row[k] for k in METRICS)
    return f"{chamfer:.4f} | {f02:.3f} | {f05:.3f} | {psnr:.2f} | {seconds:.1f} |"


if __name__ == "__main__":
    main()
