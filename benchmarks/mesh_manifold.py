"""Is the mesh stage's output a closed 2-manifold, and what does the repair cost? One row per mesh.

Quadric decimation (fast-simplification) pinches and flattens thin parts into non-manifold edges and vertices;
:func:`recon.meshing.make_manifold` repairs them. For each input this prints the defects of the decimated surface
before the repair and of the final mesh (both welded by position, as a game engine sees them: boundary edges,
non-manifold edges, non-manifold vertices, and trimesh's ``is_volume``), the face counts, and process CPU seconds
(fastest of ``--repeat``) of the repair alone and of the whole mesh stage (:func:`recon.meshing.extract_mesh`).

Inputs: fitted fields saved by ``benchmarks/recon_speed.py --fields-dir DIR`` (``<mesh>/grid.pt``), or, without
``--fields-dir``, exact SDFs of the test meshes at the default preset's last grid resolution (thin plates and legs
where a fitted field has thickness: a harder case).

    python benchmarks/mesh_manifold.py --fields-dir fields          # fitted fields of the default preset
    python benchmarks/mesh_manifold.py --meshes wooden_table spot   # exact SDFs of test meshes
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from img2mesh.config import load_config  # noqa: E402
from recon.evaluation.mesh_checks import topology_defects  # noqa: E402
from recon.meshing import MeshConfig, decimate, extract_mesh, make_manifold  # noqa: E402

DEFECTS = ("boundary_edges", "non_manifold_edges", "non_manifold_vertices")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields-dir", type=Path, help="fitted fields (<mesh>/grid.pt) saved by recon_speed.py")
    parser.add_argument("--meshes-dir", type=Path, default=ROOT / "tests" / "data" / "meshes")
    parser.add_argument("--meshes", nargs="*", help="mesh stems (default: all)")
    parser.add_argument("--resolution", type=int, default=128, help="SDF grid points along the longest side")
    parser.add_argument("--config", default=None, help="preset name or YAML path (its mesh section is used)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per mesh (the fastest counts)")
    args = parser.parse_args()
    config = load_config(args.config).mesh
    if args.fields_dir:
        names = sorted(p.parent.name for p in args.fields_dir.glob("*/grid.pt"))
    else:
        names = sorted(p.stem for p in args.meshes_dir.iterdir() if p.suffix.lower() in (".obj", ".glb"))
    names = [n for n in names if not args.meshes or n in set(args.meshes)]

    rows = {}
    for name in names:
        sdf, lo, hi = field_sdf(args.fields_dir / name) if args.fields_dir else mesh_sdf(args, name)
        raw = extract_mesh(sdf, lo, hi, MeshConfig(**{**vars(config), "faces": 10**9}))  # no decimation
        decimated = decimate(raw.copy(), config.faces)
        repair, _ = fastest(args.repeat, make_manifold, decimated)
        stage, final = fastest(args.repeat, extract_mesh, sdf, lo, hi, config)
        row = {"raw faces": len(raw.faces)}
        for label, mesh in (("before", decimated), ("after", final)):
            welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
            row |= {f"{label} faces": len(welded.faces), f"{label} volume": welded.is_volume}
            row |= {f"{label} {k}": v for k, v in topology_defects(welded).items()}
        row |= {"repair s": repair, "stage s": stage}
        rows[name] = row
        print(name, row, flush=True)

    header = ["mesh", "MC faces", "decimated faces", "boundary / nm edges / nm vertices", "volume"]
    header += ["final faces", "boundary / nm edges / nm vertices", "volume", "repair CPU s", "mesh stage CPU s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, row in rows.items():
        cells = [name, str(row["raw faces"])]
        for label in ("before", "after"):
            cells += [str(row[f"{label} faces"]), " / ".join(str(row[f"{label} {k}"]) for k in DEFECTS)]
            cells.append("yes" if row[f"{label} volume"] else "no")
        cells += [f"{row['repair s']:.3f}", f"{row['stage s']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    means = [float(np.mean([r[k] for r in rows.values()])) for k in ("repair s", "stage s")]
    closed = [sum(r[f"{label} volume"] for r in rows.values()) for label in ("before", "after")]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/mesh_manifold.py " + " ".join(sys.argv[1:])
    print(f"\nCPU, torch threads {torch.get_num_threads()}, {date}, command: {command}")
    print("\n".join(lines))
    print(
        f"\nclosed 2-manifolds: {closed[0]}/{len(rows)} decimated, {closed[1]}/{len(rows)} final; "
        f"mean repair {means[0]:.3f} s, mean mesh stage {means[1]:.3f} s (CPU)"
    )


def fastest(repeat: int, function, *args):
    """Fewest process CPU seconds of ``repeat`` calls (the machine may be shared: CPU time, not wall time), and the
    last call's result."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        result = function(*args)
        times.append(time.process_time() - start)
    return min(times), result


def field_sdf(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SDF indexed [x, y, z] and its box corners from a saved fitted field (the layout finish_mesh reads)."""
    data = torch.load(folder / "grid.pt")
    return data["sdf"][0, 0].permute(2, 1, 0).numpy(), data["lo"].numpy(), data["hi"].numpy()


def mesh_sdf(args: argparse.Namespace, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact SDF of a test mesh over its bounds padded by 4%, ``--resolution`` points along the longest side;
    distances next to the surface only (marching cubes reads no other), two voxels elsewhere."""
    import igl
    from scipy.ndimage import binary_dilation, binary_erosion

    from recon.evaluation.metrics import occupancy, world_geometry
    from recon.evaluation.oracle import load_mesh

    path = next(p for p in args.meshes_dir.iterdir() if p.stem == name and p.suffix.lower() in (".obj", ".glb"))
    mesh = load_mesh(path)
    geometry = world_geometry(mesh)
    lo, hi = geometry.bounds
    pad = 0.04 * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    shape = tuple(np.round(args.resolution * (hi - lo) / (hi - lo).max()).astype(int))
    axes = [np.linspace(lo[k], hi[k], shape[k]) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    inside = occupancy(mesh, points).reshape(shape)
    band = binary_dilation(inside) & ~binary_erosion(inside)
    distance = np.full(shape, 2 * (hi - lo).max() / (args.resolution - 1), dtype=np.float32)
    squared, _, _ = igl.point_mesh_squared_distance(
        points[band.reshape(-1)].astype(np.float64), np.asarray(geometry.vertices, np.float64), geometry.faces
    )
    distance[band] = np.sqrt(squared)
    return np.where(inside, -distance, distance), lo, hi


if __name__ == "__main__":
    main()
