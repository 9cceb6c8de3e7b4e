"""How much of each test mesh's surface no Zero123++ view sees: a bound on every geometry score of the benchmarks.

The geometry metrics (:mod:`recon.evaluation.metrics`) sample the whole ground-truth surface, inside faces and recesses
included; a reconstruction from the six views can only guess what none of them sees. For each mesh this prints
:func:`recon.evaluation.metrics.unseen_share` for the six cameras of each pose set, rendered at twice the views'
320 px; read it beside a recall or F-score of the same mesh.

    python benchmarks/unseen_surface.py                      # every test mesh, both pose sets
    python benchmarks/unseen_surface.py --meshes cake duck --samples 50000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh_set import MESHES, mesh_paths  # noqa: E402

from recon.cameras import VIEW_SIZE, zero123pp_cameras  # noqa: E402
from recon.evaluation.metrics import unseen_share  # noqa: E402
from recon.evaluation.oracle import load_mesh  # noqa: E402

VERSIONS = ("v1.2", "v1.1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshes", nargs="*", help="mesh file stems (default: all)")
    parser.add_argument("--samples", type=int, default=20_000, help="surface points per mesh")
    parser.add_argument("--tolerance", type=float, default=0.01, help="depth slack, world units")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.tolerance < 0:
        parser.error("--samples must be at least 1 and --tolerance at least 0")
    size = 2 * VIEW_SIZE
    cameras = {version: zero123pp_cameras(version, image_size=size) for version in VERSIONS}
    print(f"share of the surface no view sees ({args.samples} points, tolerance {args.tolerance}, {size} px)\n")
    print("| mesh | " + " | ".join(VERSIONS) + " |\n|" + " --- |" * (len(VERSIONS) + 1))
    for path in mesh_paths(args.meshes, MESHES):
        mesh = load_mesh(path)
        shares = [unseen_share(mesh, *cameras[v], size, args.samples, args.tolerance) for v in VERSIONS]
        print(f"| {path.stem} | " + " | ".join(f"{share:.3f}" for share in shares) + " |", flush=True)


if __name__ == "__main__":
    main()
