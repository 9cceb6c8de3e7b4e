"""Mask quality of the "background" method against the renderer's exact alpha, on every test mesh.

Each mesh of ``tests/data/meshes`` is rendered at the six v1.2 poses on gray 127 (320 px, 2x2 supersampled,
as Zero123++ would show it), quantised to 8 bits like a PNG grid, and masked; the table gives, per mesh, the mean
over the six views of the soft IoU (sum of minima / sum of maxima) and of the IoU of the masks thresholded at 0.5,
on the clean render and with Gaussian noise of 2 levels added (a diffusion model's background is not flat).

    .venv/bin/python benchmarks/mask_quality.py [MESH ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.cameras import zero123pp_cameras  # noqa: E402
from recon.config import ViewsConfig  # noqa: E402
from recon.evaluation.oracle import GRAY, load_mesh  # noqa: E402
from recon.masks import compute_masks  # noqa: E402
from recon.render import render_views  # noqa: E402

MESHES = ROOT / "tests" / "data" / "meshes"
NOISE_LEVELS = 2.0


def scores(masks: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    soft = np.mean([np.minimum(m, a).sum() / np.maximum(m, a).sum() for m, a in zip(masks, alpha, strict=True)])
    hard = np.mean(
        [((m > 0.5) & (a > 0.5)).sum() / ((m > 0.5) | (a > 0.5)).sum() for m, a in zip(masks, alpha, strict=True)]
    )
    return float(soft), float(hard)


def main(names: list[str]) -> None:
    paths = (
        [MESHES / n for n in names] if names else sorted(p for p in MESHES.iterdir() if p.suffix in (".obj", ".glb"))
    )
    k, c2w = zero123pp_cameras("v1.2", 4.0, 320)
    config = ViewsConfig(mask="background")
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'mesh':28s} {'soft IoU':>9s} {'IoU@0.5':>8s} {'noisy soft':>11s} {'noisy @0.5':>11s} {'mask s':>7s}")
    for path in paths:
        render = render_views(load_mesh(path), k, c2w, 320, 320, "lit", GRAY, 2)
        tiles = np.round(render.rgb * 255).astype(np.float32)
        start = time.perf_counter()
        clean = scores(compute_masks(tiles / 255, config), render.alpha)
        seconds = time.perf_counter() - start
        noisy_tiles = np.round(np.clip(tiles + rng.normal(0, NOISE_LEVELS, tiles.shape), 0, 255)) / 255
        noisy = scores(compute_masks(noisy_tiles.astype(np.float32), config), render.alpha)
        rows.append((*clean, *noisy))
        print(f"{path.name:28s} {clean[0]:9.4f} {clean[1]:8.4f} {noisy[0]:11.4f} {noisy[1]:11.4f} {seconds:7.2f}")
    mean = np.mean(rows, axis=0)
    print(f"{'mean':28s} {mean[0]:9.4f} {mean[1]:8.4f} {mean[2]:11.4f} {mean[3]:11.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
