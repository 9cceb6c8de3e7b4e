"""Regenerate the example inputs from the CC0 test meshes in ``tests/data/meshes``.

Each photo is the ground-truth renderer's "input photo" of the mesh (RGBA, azimuth 0, 512 px), and
``spot_views.png`` is the exact 640x960 grid Zero123++ v1.2 would draw for Spot if it were perfect (oracle views,
see :mod:`recon.evaluation.oracle`), so ``img2mesh recon examples/spot_views.png`` works with no model and no GPU.

Run from the repository root: ``python examples/make_examples.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import trimesh

from recon.evaluation.oracle import load_mesh, oracle_views

HERE = Path(__file__).resolve().parent
MESHES = HERE.parent / "tests" / "data" / "meshes"

#: The CC0 / public-domain test meshes (see examples/CREDITS.md); the others carry licences that need more care.
CC0_MESHES = ("bob.obj", "spot.obj", "cake.glb", "wooden_table.glb", "painted_wooden_stool.glb")

#: Turn about the up axis (degrees) so the photo shows the object's face rather than its back.
YAW = {"spot.obj": -170.0, "bob.obj": -30.0}

#: The mesh whose oracle grid ships as the ready-made views example.
GRID_MESH = "spot.obj"


def main() -> None:
    (HERE / "photos").mkdir(exist_ok=True)
    for name in CC0_MESHES:
        mesh = load_mesh(MESHES / name)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(math.radians(YAW.get(name, 0.0)), [0, 0, 1]))
        oracle = oracle_views(mesh)
        stem = Path(name).stem
        oracle.input_photo.save(HERE / "photos" / f"{stem}.png", optimize=True)
        if name == GRID_MESH:
            oracle.grid.save(HERE / f"{stem}_views.png", optimize=True)
        print(f"{stem}: done")


if __name__ == "__main__":
    main()
