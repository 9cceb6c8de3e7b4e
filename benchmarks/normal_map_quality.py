"""What the normal map buys a low-poly mesh: lit novel views of a 2k-face mesh with and without it, and the 20k one.

For each test mesh: oracle views (recon.evaluation.oracle), one fit (``--config``'s recon section), then from the same
fields the 20k-face mesh (the default mesh and texture sections), the 2k-face mesh (the lowpoly preset's) and the 2k
mesh with its normal map, baked from the lowpoly surface decimated to the export's ``normal_map_faces`` as
recon.asset does (the bake timed on ``--device``). Four cases (:data:`CASES`, one table each): the 2k mesh as
shipped (512² texture and map); with the 20k mesh's 1024² texture, where what is left of the gap is the surface's,
not the texture's; as shipped but with the map's source smoothed like the 20k mesh; and as shipped but baked from
the fitted SDF's own normals, as the bake was before. Each mesh is rendered lit under the oracle's fixed light
(recon.render's AMBIENT, DIFFUSE, LIGHT_DIRECTION) from the 12 novel views of recon.evaluation.metrics and compared
with the lit ground truth, PSNR over the union of alphas on gray, two ways:

- ``clay``: every mesh in the renderer's clay albedo, so only the shading normals differ (the normal map's own job);
- ``albedo``: each mesh with its albedo texture (recon.albedo: the baked views with the learnt shading divided out)
  against the ground truth with its own textures: what an engine shows when it lights the asset.

``gap closed`` = (PSNR 2k+map − PSNR 2k) / (PSNR 20k − PSNR 2k), per mesh and for the means. The prediction is
rendered here, not by recon.render, because that renderer knows no normal maps: per pixel the interpolated vertex
normal and tangent and the map's texel make the shading normal, as a glTF shader does. ``--images FILE`` writes one
mesh's first novel view side by side: ground truth, 20k, 2k, 2k + normal map (clay).

    .venv/bin/python benchmarks/normal_map_quality.py --config cpu --device cpu --meshes duck --no-write
    python benchmarks/normal_map_quality.py --config default --device cuda --images benchmarks/normal_map.png
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import replace_section  # noqa: E402  (benchmarks/, the script's folder)

from img2mesh.config import load_config  # noqa: E402
from recon.albedo import fine_normals, remove_shading  # noqa: E402
from recon.asset import normal_map_source  # noqa: E402
from recon.evaluation.metrics import novel_view_cameras  # noqa: E402
from recon.evaluation.oracle import GRAY, load_mesh, oracle_views  # noqa: E402
from recon.fit import fit_fields  # noqa: E402
from recon.normal_map import bake_normal_field, bake_normal_map, vertex_normals, vertex_tangents  # noqa: E402
from recon.reconstruct import finish_mesh, fitted_surface  # noqa: E402
from recon.render import (  # noqa: E402
    AMBIENT,
    DEFAULT_ALBEDO,
    DIFFUSE,
    LIGHT_DIRECTION,
    prepare_mesh,
    rasterize,
    render_views,
    world_geometry,
)

MESHES = ROOT / "tests" / "data" / "meshes"
BEGIN, END = "<!-- normal_map_quality:begin -->", "<!-- normal_map_quality:end -->"
SUPERSAMPLE = 2


def texture_tensor(image, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(image.convert("RGB")), dtype=torch.float32, device=device).permute(2, 0, 1) / 255


def sample(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup (N, C) with trimesh UVs (v up)."""
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None]
    return F.grid_sample(texture[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def render_lit(mesh, k, c2w, size: int, albedo: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Lit render (B, H, W, 3) on gray and alpha (B, H, W) of a UV mesh, its normal map applied where it has one;
    ``albedo`` "clay" or "texture"."""
    normals = vertex_normals(mesh)
    material = mesh.visual.material
    mapped = getattr(material, "normalTexture", None) is not None
    prepared = prepare_mesh(mesh, device)
    kk = np.array(k, dtype=np.float64).reshape(-1, 3, 3)
    kk[:, :2] *= SUPERSAMPLE
    fragments = rasterize(prepared, kk, np.asarray(c2w), size * SUPERSAMPLE, size * SUPERSAMPLE)
    b, h, w = fragments.face_id.shape
    face = fragments.face_id.reshape(-1)
    covered = torch.nonzero(face >= 0).squeeze(1)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64, device=device)[face[covered]]
    bary = fragments.bary.reshape(-1, 3)[covered][..., None]

    def interpolate(values) -> torch.Tensor:
        return (torch.as_tensor(np.asarray(values), dtype=torch.float32, device=device)[faces] * bary).sum(1)

    normal = interpolate(normals)
    uv = interpolate(mesh.visual.uv)
    if mapped:
        tangents = vertex_tangents(mesh, normals)
        tangent = interpolate(tangents[:, :3])
        bitangent = torch.where(interpolate(tangents[:, 3:]) < 0, -1.0, 1.0) * torch.cross(normal, tangent, dim=-1)
        local = sample(texture_tensor(material.normalTexture, device), uv) * 2 - 1
        normal = tangent * local[:, :1] + bitangent * local[:, 1:2] + normal * local[:, 2:]
    normal = F.normalize(normal, dim=-1)
    if albedo == "clay":
        colour = torch.tensor(DEFAULT_ALBEDO, device=device).expand(len(covered), 3)
    else:
        colour = sample(texture_tensor(material.baseColorTexture, device), uv)
    light = torch.as_tensor(LIGHT_DIRECTION, dtype=torch.float32, device=device)
    shaded = colour * (AMBIENT + DIFFUSE * (normal @ light).clamp_min(0))[:, None]
    rgb = torch.zeros(b * h * w, 3, device=device)
    rgb[covered] = shaded.clamp(0, 1)
    alpha = (face >= 0).float()
    rgb = F.avg_pool2d(rgb.view(b, h, w, 3).permute(0, 3, 1, 2), SUPERSAMPLE).permute(0, 2, 3, 1)
    alpha = F.avg_pool2d(alpha.view(b, 1, h, w), SUPERSAMPLE)[:, 0]
    rgb = rgb + (1 - alpha[..., None]) * GRAY
    return rgb.cpu().numpy(), alpha.cpu().numpy()


def psnr(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean PSNR (dB) over the views, each over the union of the two alphas."""
    values = []
    for a, b, alpha_a, alpha_b in zip(pred[0], gt[0], pred[1], gt[1], strict=True):
        union = (alpha_a > 0) | (alpha_b > 0)
        mse = float(np.mean((a[union].astype(np.float64) - b[union]) ** 2))
        values.append(10 * np.log10(1.0 / max(mse, 1e-12)))
    return float(np.mean(values))


def gap_closed(low: float, mapped: float, high: float) -> float:
    """Share of the low → high PSNR gap that ``mapped`` closes; NaN where the 20k mesh is no better than the 2k."""
    return (mapped - low) / (high - low) if high > low else float("nan")


def timed(sync: str, function, *args, **kwargs):
    """``function(*args, **kwargs)`` and its seconds, the ``sync`` device synchronised at both ends."""
    if sync.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    if sync.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


#: The 2k cases measured, heading per case (``side``: the 2k texture side; ``smoothing``: whose smoothing the normal
#: map's source surface has, the lowpoly preset's as shipped or the default preset's, i.e. the 20k mesh's own).
CASES = {
    "shipped": "2k mesh as the lowpoly preset ships it: {side}² texture and normal map, the map's source the lowpoly "
    "surface (its 20 smoothing passes) decimated to 20k faces",
    "equal texture": "2k mesh with the 20k mesh's texture side, {side}² (and a {side}² normal map): what is left of "
    "the gap is the surface's",
    "source as 20k": "as shipped, but the map's source smoothed like the 20k mesh (10 passes), i.e. the default "
    "preset's 20k mesh itself",
    "SDF gradient": "as shipped, but the map baked from the fitted SDF's own normals (each texel's point moved onto "
    "its zero level set), as before the high-poly bake; no source mesh",
}


def measure(path: Path, args, cache: Path | None) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """One mesh: fit (or load the cached fit), the 20k mesh, and per case of :data:`CASES` the 2k mesh without and
    with its normal map; their PSNRs and the normal map's seconds, one row per case."""
    device = args.device
    fit_config = load_config(args.config)
    high, low = load_config("default"), load_config("lowpoly")
    gt = load_mesh(path)
    cached = cache / f"{path.stem}.pt" if cache else None
    if cached is not None and cached.is_file():
        saved = torch.load(cached, weights_only=False)
        fields, views = saved["fields"], saved["views"]
    else:
        views = oracle_views(gt, device=device).views
        fields = fit_fields(views, fit_config.recon, device=device, progress=False)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"fields": fields, "views": views}, cached)
    # the meshes as recon.asset.finish_asset makes them for the default and the lowpoly preset
    mesh20k = finish_mesh(fields, views, high.mesh, high.texture, device=device)
    surfaces = {"lowpoly": fitted_surface(fields, low.mesh), "default": fitted_surface(fields, high.mesh)}
    normal_map_source(surfaces["lowpoly"], low.export)  # warm-up
    sources = {name: timed(device, normal_map_source, surface, low.export) for name, surface in surfaces.items()}
    k, c2w = novel_view_cameras(args.size)
    geometry = world_geometry(gt)
    clay = trimesh.Trimesh(geometry.vertices, geometry.faces, process=False)
    truth = {
        "clay": render_views(clay, k, c2w, args.size, args.size, "lit", GRAY, SUPERSAMPLE, device),
        "albedo": render_views(gt, k, c2w, args.size, args.size, "lit", GRAY, SUPERSAMPLE, device),
    }

    def render_both(mesh: trimesh.Trimesh) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        delit = remove_shading(mesh, fields.grid, device)
        return {mode: render_lit(mesh if mode == "clay" else delit, k, c2w, args.size, mode, device) for mode in truth}

    high_renders = render_both(mesh20k)
    images = {"truth": truth["clay"].rgb[0], "20k": high_renders["clay"][0][0]}
    shipped, equal = args.low_texture or (low.texture.size, high.texture.size)
    cases = {
        "shipped": (shipped, "lowpoly"),
        "equal texture": (equal, "lowpoly"),
        "source as 20k": (shipped, "default"),
        "SDF gradient": (shipped, None),
    }
    bare: dict[int, tuple[trimesh.Trimesh, dict]] = {}
    rows = {}
    for case, (side, smoothing) in cases.items():
        if side not in bare:
            texture = dataclasses.replace(low.texture, size=side)
            mesh2k = finish_mesh(fields, views, low.mesh, texture, device=device, surface=surfaces["lowpoly"])
            bare[side] = mesh2k, render_both(mesh2k)
        mesh2k, low_renders = bare[side]
        if smoothing is None:  # the fitted SDF's normals, as recon.albedo reads them
            detail, source_s = None, 0.0
            bake, source = bake_normal_field, lambda points, coarse: fine_normals(fields.grid, points, coarse)
        else:
            (detail, source_s), bake = sources[smoothing], bake_normal_map
            source = detail
        bake(mesh2k, source, device=device)  # warm-up (kernels, allocator)
        mapped, bake_s = timed(device, bake, mesh2k, source, device=device)
        row: dict[str, float] = {"faces_high": len(mesh20k.faces), "faces_low": len(mesh2k.faces), "side": side}
        row.update(faces_detail=0 if detail is None else len(detail.faces), source_s=source_s, bake_s=bake_s)
        mapped_renders = render_both(mapped)
        for mode in truth:
            renders = {"20k": high_renders[mode], "2k": low_renders[mode], "2k+map": mapped_renders[mode]}
            for name, rendered in renders.items():
                row[f"{mode} {name}"] = psnr(rendered, (truth[mode].rgb, truth[mode].alpha))
            row[f"{mode} closed"] = gap_closed(row[f"{mode} 2k"], row[f"{mode} 2k+map"], row[f"{mode} 20k"])
        # how close each 2k mesh looks to the 20k one in clay: the normal map's fidelity to its target
        row["to 20k: 2k"] = psnr(low_renders["clay"], high_renders["clay"])
        row["to 20k: 2k+map"] = psnr(mapped_renders["clay"], high_renders["clay"])
        if case == "shipped":
            images.update({"2k": low_renders["clay"][0][0], "2k+map": mapped_renders["clay"][0][0]})
        rows[case] = row
    return rows, images


def table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table of per-mesh rows plus their mean (the mean's ``closed`` from the mean PSNRs)."""
    keys = list(next(iter(rows.values())))
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
    for mode in ("clay", "albedo"):
        mean[f"{mode} closed"] = gap_closed(mean[f"{mode} 2k"], mean[f"{mode} 2k+map"], mean[f"{mode} 20k"])
    header = ["mesh", "faces 20k / 2k / source", "source s", "bake s"]
    header += [f"{mode} {n}" for mode in ("clay", "albedo") for n in ("20k", "2k", "2k+map", "closed")]
    header += ["clay 2k to 20k", "clay 2k+map to 20k"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, row in [*rows.items(), ("**mean**", mean)]:
        faces = f"{row['faces_high']:.0f} / {row['faces_low']:.0f} / {row['faces_detail']:.0f}"
        cells = [faces, f"{row['source_s']:.3f}", f"{row['bake_s']:.3f}"]
        for mode in ("clay", "albedo"):
            cells += [f"{row[f'{mode} {n}']:.2f}" for n in ("20k", "2k", "2k+map")]
            closed = row[f"{mode} closed"]
            cells.append("n/a (20k ≤ 2k)" if np.isnan(closed) else f"{100 * closed:.0f}%")
        cells += [f"{row['to 20k: 2k']:.2f}", f"{row['to 20k: 2k+map']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="preset or YAML whose recon section fits the fields")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--meshes", nargs="*", help="mesh stems from tests/data/meshes (default: all)")
    parser.add_argument("--size", type=int, default=320, help="side of the novel views in pixels")
    parser.add_argument("--cache", type=Path, help="folder of fitted fields to reuse (written when missing)")
    parser.add_argument("--images", type=Path, help="PNG of the first mesh's first novel view, side by side")
    parser.add_argument(
        "--low-texture",
        type=int,
        nargs=2,
        metavar=("SHIPPED", "EQUAL"),
        help="the 2k mesh's texture sides, shipped and equal (default: the lowpoly preset's 512 and the 20k mesh's "
        "1024, with which the gap is the surface's alone)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    paths = sorted(p for p in MESHES.iterdir() if p.suffix.lower() in (".obj", ".glb"))
    if args.meshes:
        paths = [p for p in paths if p.stem in set(args.meshes)]
    by_case: dict[str, dict[str, dict[str, float]]] = {}
    for index, path in enumerate(paths):
        rows, images = measure(path, args, args.cache)
        for case, row in rows.items():
            by_case.setdefault(case, {})[path.stem] = row
            print(path.stem, case, {k: round(v, 3) for k, v in row.items()}, flush=True)
        if index == 0 and args.images:
            from PIL import Image

            strip = np.concatenate([images[n] for n in ("truth", "20k", "2k", "2k+map")], axis=1)
            Image.fromarray((strip * 255 + 0.5).astype(np.uint8)).save(args.images)
    tables = []
    for case, rows in by_case.items():
        side = int(next(iter(rows.values()))["side"])
        tables.append(f"**{case}**: {CASES[case].format(side=side)}.\n\n{table(rows)}\n")
        print(tables[-1])
    if not args.no_write:
        card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
        command = "python benchmarks/normal_map_quality.py " + " ".join(sys.argv[1:])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = (
            f"## Normal map on a 2k-face mesh (normal_map_quality.py)\n\n{card}, fit config `{args.config}`, "
            f"`{command}`, {stamp}. PSNR (dB) of 12 lit novel views against the lit ground truth; `closed`: share of "
            f"the 2k → 20k gap that the normal map closes; `source s`: decimating the normal map's high-poly source "
            f"(CPU); `bake s`: the bake on {args.device} (warm, in-process); `to 20k`: PSNR of the 2k meshes' clay "
            f"renders against the 20k mesh's.\n\n" + "\n".join(tables)
        )
        replace_section(BEGIN, END, body)


if __name__ == "__main__":
    main()
