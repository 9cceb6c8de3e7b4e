"""How much of each view's misregistration the fit's registration recovers, and what that does to the mesh.

One test mesh, imperfect views as in ``recon_robustness.py`` (read back as a user's grid is), one fit. The true
displacement of each view (``view_displacement``: misregistration and inconsistency) is read at the nodes of the
registration grid and compared with the learnt fields, both less their common part that a move of the whole object
explains (``gauge_basis``, which the fit projects out too). Printed: the RMS of the truth, of the learnt fields and
of their difference (pixels of the 320-px view, at the nodes: the view's corners on the default 2 x 2 grid, where a
turn or scale moves the view most), per view and in all, then the mesh's scores. ``--oracle`` reads the views
through the truth before the fit (``registered_views``, registration off): what a perfect registration would give.
The second table splits each view's field, true / learnt, into the similarity nearest it and what is left.

    python benchmarks/registration_recovery.py --mesh wooden_table --families misregistration \\
        --set recon.rays=2048 --set recon.samples=48 --set recon.device=cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh_set import MESHES, mesh_paths, score

from img2mesh.commands.options import parse_set_values
from img2mesh.config import load_config
from recon.evaluation.imperfections import (
    FAMILIES,
    ImperfectionConfig,
    as_user_views,
    imperfect_views,
    registered_views,
    view_displacement,
)
from recon.evaluation.oracle import load_mesh, oracle_views
from recon.fit import fit_fields
from recon.reconstruct import finish_mesh
from recon.view_refinement import gauge_basis


def true_fields(config: ImperfectionConfig, seed: int, count: int, size: int, cells: int) -> np.ndarray:
    """(N, cells, cells, 2) the field that undoes each view's displacement, at the nodes, pixels (x, y)."""
    ticks = np.clip(np.round(np.arange(cells) * size / (cells - 1)), 0, size - 1).astype(int)
    fields = np.zeros((count, cells, cells, 2))
    for view in range(count):
        offset = view_displacement(config, seed, view, size, size)  # (rows, cols): the view shows pixel + offset
        fields[view] = -offset[::-1][:, ticks][:, :, ticks].transpose(1, 2, 0)  # read back at pixel - offset
    return fields


def similarity_parts(field: np.ndarray, size: int) -> list[float]:
    """A view's field (c, c, 2) as the similarity nearest it (shift x, y in pixels, turn in degrees and scale in %
    about the view's centre: the field's own sense) and the RMS of what is left, pixels."""
    cells = field.shape[0]
    ticks = np.arange(cells) * size / (cells - 1) - size / 2
    y, x = (a.reshape(-1) for a in np.meshgrid(ticks, ticks, indexing="ij"))
    one, zero = np.ones_like(x), np.zeros_like(x)
    basis = np.stack([np.stack(p, -1).reshape(-1) for p in ((one, zero), (zero, one), (-y, x), (x, y))], -1)
    params, *_ = np.linalg.lstsq(basis, field.reshape(-1), rcond=None)
    left = field.reshape(-1) - basis @ params
    return [params[0], params[1], np.rad2deg(params[2]), 100 * params[3], float(np.sqrt((left**2).mean() * 2))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", default="wooden_table", help="test mesh stem")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the imperfections")
    parser.add_argument("--config", default=None, help="preset name or YAML path (default: the default preset)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, as the CLI's --set")
    parser.add_argument("--oracle", action="store_true", help="read the views through the truth, registration off")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    overrides = parse_set_values(args.set or [])
    if args.oracle:
        overrides["recon.registration"] = False
    settings = load_config(args.config, overrides)
    gt = load_mesh(mesh_paths([args.mesh], MESHES)[0])
    config = ImperfectionConfig(strength=args.strength, families=tuple(args.families))
    clean = oracle_views(gt, device=args.device).views
    views = as_user_views(imperfect_views(clean, config, args.seed), settings.views)
    count, size = len(views), views.size[1]
    if args.oracle:
        views = registered_views(views, config, args.seed)
    fields = fit_fields(views, settings.recon, device=args.device, progress=False, seed=settings.runtime.seed)
    mesh = finish_mesh(fields, views, settings.mesh, settings.texture, device=fields.device)
    # The fields have more nodes than ``recon.registration_cells`` once their bend opened (``registration_bend_cells``).
    cells = settings.recon.registration_cells if fields.view_warps is None else fields.view_warps.shape[1]
    truth = true_fields(config, args.seed, count, size, cells)
    learnt = np.zeros_like(truth) if fields.view_warps is None else fields.view_warps * size

    gauge = gauge_basis(views.intrinsics, views.cam_to_world, size, cells).double().numpy()

    def free(field: np.ndarray) -> np.ndarray:
        flat = field.reshape(-1)
        return (flat - (gauge @ flat) @ gauge).reshape(field.shape)

    def rms(field: np.ndarray) -> float:
        return float(np.sqrt((field**2).sum(-1).mean()))

    truth, learnt = free(truth), free(learnt)
    print("| view | truth px | learnt px | residual px |\n| --- | --- | --- | --- |")
    for view in range(count):
        print(f"| {view} | {rms(truth[view]):.2f} | {rms(learnt[view]):.2f} | {rms(truth[view] - learnt[view]):.2f} |")
    print(f"| all | {rms(truth):.2f} | {rms(learnt):.2f} | {rms(truth - learnt):.2f} |")
    print("\n| view | shift x px | shift y px | turn deg | scale % | off-similarity px |\n" + "|" + " --- |" * 6)
    for view in range(count):
        parts = [similarity_parts(field[view], size) for field in (truth, learnt)]
        row = [f"{t:+.2f} / {v:+.2f}" for t, v in zip(*parts, strict=True)]
        print(f"| {view} | " + " | ".join(row) + " |")
    scores = score(mesh, gt, args.device)
    print({k: round(scores[k], 4) for k in ("chamfer", "fscore@0.02", "fscore@0.05", "psnr")})


if __name__ == "__main__":
    main()
