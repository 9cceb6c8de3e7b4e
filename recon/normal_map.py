"""Tangent-space normal map of a high-poly mesh's surface, baked onto a (decimated) UV-mapped low-poly mesh.

Decimating to a game budget (the ``lowpoly`` preset's 2k faces) flattens the shape between the coarse mesh's
vertices. The normal map keeps it as lighting detail, baked as game pipelines bake it, high-poly to low-poly: every
texel's surface point on the coarse mesh is matched with the closest point of the detail mesh (the fitted surface
decimated to :attr:`recon.config.ExportConfig.normal_map_faces`, smoothed like every exported mesh), whose
interpolated vertex normal is written in the texel's tangent frame. So the 2k-face mesh shades like a 20k-face mesh
of the same fit. (Reading the fitted SDF's own gradient instead carried the fit's surface noise, sharper
than any exported mesh shows it, and shaded worse than the bare 2k mesh: benchmarks/RESULTS.md, normal_map_quality.)
Candidate triangles come from a k-d tree of the detail mesh's face centres (scipy), the exact closest points on them
from a batched point-triangle test in torch, so the bake runs on the GPU but for one tree query.

The tangent frame is the one the exported file carries (glTF ``TANGENT``, written by :mod:`recon.export`): per-vertex
tangents along +u, Gram-Schmidt-orthogonalised against smooth vertex normals, with the handedness in ``w`` so that
the bitangent ``w · (n × t)`` points along +v (up the image, the glTF/OpenGL "+Y up" normal map convention). The
bake expresses the fine normal in the interpolated, unnormalised ``(t, b, n)`` of each texel, exactly as a shader
rebuilds it, so the map holds no bias of its own for whatever interpolation the importer uses. Vertex normals are
smooth across UV seams (vertices welded by position first), or every seam would show as a crease.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from recon.texture import fill_outside, rasterize_uv

#: Detail triangles tried per texel: those with the nearest face centres. The closest point lies on one of them
#: unless the detail mesh has triangles much larger than their neighbours; a miss lands on a neighbouring triangle,
#: whose interpolated normal is close to the right one.
CANDIDATES = 8
#: A texel whose closest detail point is farther than this many of the coarse mesh's mean edge lengths (the coarse
#: mesh bridges a gap the detail mesh has) keeps the coarse normal: the surface found there is not the one it shows.
MAX_OFFSET_EDGES = 1.0


def vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Unit area-weighted normals (V, 3), equal on every copy of a vertex split along UV seams (same position)."""
    vertices = np.asarray(mesh.vertices)
    _, welded = np.unique(vertices, axis=0, return_inverse=True)
    welded = welded.reshape(-1)
    faces = welded[np.asarray(mesh.faces)]
    corners = vertices[np.asarray(mesh.faces)]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # length = 2 · area
    summed = np.zeros((welded.max() + 1, 3))
    for k in range(3):
        np.add.at(summed, faces[:, k], face_normals)
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    return (summed / np.where(length > 0, length, 1.0))[welded]


def vertex_tangents(mesh: trimesh.Trimesh, normals: np.ndarray) -> np.ndarray:
    """Unit tangents along +u with handedness (V, 4) (glTF ``TANGENT``: bitangent = w · normal × tangent, along +v).

    Per-face UV derivatives summed per vertex (area-weighted by construction), orthogonalised against ``normals``;
    a vertex whose faces give no usable direction gets any unit vector perpendicular to its normal.
    """
    faces = np.asarray(mesh.faces)
    p = np.asarray(mesh.vertices)[faces]
    uv = np.asarray(mesh.visual.uv, dtype=np.float64)[faces]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    sign = np.where(det < 0, -1.0, 1.0)[:, None]
    # dP/du and dP/dv scaled by |det| (area weighting; the sign keeps mirrored charts' directions right)
    du = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * sign
    dv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * sign
    tangent = np.zeros((len(mesh.vertices), 3))
    bitangent = np.zeros_like(tangent)
    for k in range(3):
        np.add.at(tangent, faces[:, k], du)
        np.add.at(bitangent, faces[:, k], dv)
    tangent -= normals * (tangent * normals).sum(1, keepdims=True)
    length = np.linalg.norm(tangent, axis=1, keepdims=True)
    fallback = np.cross(normals, np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
    tangent = np.where(length > 1e-12, tangent / np.where(length > 0, length, 1.0), fallback)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    w = np.where((np.cross(normals, tangent) * bitangent).sum(1) < 0, -1.0, 1.0)
    return np.concatenate([tangent, w[:, None]], axis=1)


def texel_frames(
    mesh: trimesh.Trimesh, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The covered texels of a ``size``² texture of ``mesh``'s UVs: mask (size, size), and per covered texel (in
    row-major order) its surface point, interpolated normal, tangent and bitangent (N, 3) each, as a shader has them.
    """
    normals = vertex_normals(mesh)
    tangents = vertex_tangents(mesh, normals)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64, device=device)
    uv = torch.as_tensor(np.asarray(mesh.visual.uv), dtype=torch.float32, device=device)
    face_id, bary = rasterize_uv(uv, faces, size)
    covered = face_id >= 0
    corners = faces[face_id[covered]]
    weights = bary[covered][..., None]

    def interpolate(values: np.ndarray) -> torch.Tensor:
        table = torch.as_tensor(values, dtype=torch.float32, device=device)
        return (table[corners] * weights).sum(1)

    points = interpolate(np.asarray(mesh.vertices))
    normal = interpolate(normals)
    tangent = interpolate(tangents[:, :3])
    handedness = torch.where(interpolate(tangents[:, 3:]) < 0, -1.0, 1.0)
    bitangent = handedness * torch.cross(normal, tangent, dim=-1)
    return covered, points, normal, tangent, bitangent


def closest_barycentric(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Barycentric coordinates (..., 3) of the closest point to ``points`` on the triangles ``a, b, c`` (all (..., 3),
    broadcast), by Voronoi region of the triangle (Ericson, *Real-Time Collision Detection*, 5.1.5). A degenerate
    triangle gets the closest of its corners and edges that the region tests find, never NaN."""
    ab, ac = b - a, c - a
    d1, d2 = (ab * (points - a)).sum(-1), (ac * (points - a)).sum(-1)
    d3, d4 = (ab * (points - b)).sum(-1), (ac * (points - b)).sum(-1)
    d5, d6 = (ab * (points - c)).sum(-1), (ac * (points - c)).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    tiny = torch.finfo(points.dtype).tiny

    def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        return (numerator / torch.where(denominator.abs() > tiny, denominator, tiny)).clamp(0, 1)

    # the weights (v, w) of b and c region by region, inside the triangle first; Ericson tests the other regions in
    # the order below and returns at the first that holds, so they override the result in reverse
    total = va + vb + vc
    v, w = ratio(vb, total), ratio(vc, total)
    zero, one = torch.zeros_like(v), torch.ones_like(v)
    t = ratio(d4 - d3, (d4 - d3) + (d5 - d6))
    regions = [
        ((d1 <= 0) & (d2 <= 0), zero, zero),  # corner a
        ((d3 >= 0) & (d4 <= d3), one, zero),  # corner b
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), ratio(d1, d1 - d3), zero),  # edge ab
        ((d6 >= 0) & (d5 <= d6), zero, one),  # corner c
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), zero, ratio(d2, d2 - d6)),  # edge ac
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 1 - t, t),  # edge bc
    ]
    for region, region_v, region_w in reversed(regions):
        v, w = torch.where(region, region_v, v), torch.where(region, region_w, w)
    return torch.stack([(1 - v - w).clamp_min(0), v, w], dim=-1)


def detail_normals(detail: trimesh.Trimesh, points: torch.Tensor, coarse: torch.Tensor, reach: float) -> torch.Tensor:
    """Unit normals (N, 3) of ``detail`` at its closest points to ``points`` (N, 3): its smooth vertex normals
    interpolated there, as the detail mesh shades. ``coarse`` (N, 3) where the closest point is farther than
    ``reach`` or faces the other way (the coarse mesh bridges a gap there)."""
    from scipy.spatial import cKDTree

    device = points.device
    faces = np.asarray(detail.faces)
    vertices = np.asarray(detail.vertices)
    tree = cKDTree(vertices[faces].mean(axis=1))
    _, nearest = tree.query(points.cpu().numpy(), k=min(CANDIDATES, len(faces)), workers=-1)
    nearest = torch.as_tensor(nearest.reshape(len(points), -1), device=device)  # k = 1 gives (N,)
    candidates = torch.as_tensor(faces, device=device)[nearest]  # (N, K, 3)
    table = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    corners = table[candidates]  # (N, K, 3 corners, 3)
    bary = closest_barycentric(points[:, None], corners[:, :, 0], corners[:, :, 1], corners[:, :, 2])
    closest = (corners * bary[..., None]).sum(2)
    distance, best = (closest - points[:, None]).norm(dim=-1).min(dim=1)
    pick = torch.arange(len(points), device=device)
    normals = torch.as_tensor(vertex_normals(detail), dtype=torch.float32, device=device)
    normal = F.normalize((normals[candidates[pick, best]] * bary[pick, best][..., None]).sum(1), dim=-1, eps=1e-8)
    coarse = F.normalize(coarse, dim=-1, eps=1e-8)
    usable = (distance <= reach) & ((normal * coarse).sum(-1) > 0)
    return torch.where(usable[:, None], normal, coarse)


def mean_edge_length(mesh: trimesh.Trimesh) -> float:
    """Mean length of ``mesh``'s face edges."""
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    return float(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).mean())


def bake_normal_map(
    mesh: trimesh.Trimesh,
    detail: trimesh.Trimesh,
    size: int | None = None,
    device: str | torch.device = "cpu",
    timings: dict[str, float] | None = None,
) -> trimesh.Trimesh:
    """``mesh`` (UV-textured, world z-up, PBR material) with a tangent-space normal map of the ``detail`` mesh's
    surface (same frame, outward winding) added as the material's ``normalTexture`` (a copy; ``size`` defaults to the
    base colour texture's side)."""
    reach = MAX_OFFSET_EDGES * mean_edge_length(mesh)
    return bake_normal_field(
        mesh, lambda points, coarse: detail_normals(detail, points, coarse, reach), size, device, timings
    )


def bake_normal_field(
    mesh: trimesh.Trimesh,
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    size: int | None = None,
    device: str | torch.device = "cpu",
    timings: dict[str, float] | None = None,
) -> trimesh.Trimesh:
    """:func:`bake_normal_map` of any normal field: ``field(points, coarse)`` gives the unit normals (N, 3) to bake
    at the texels' surface points (N, 3) of ``mesh``, whose interpolated normals are ``coarse`` (N, 3). (The
    benchmark bakes the fitted SDF's own normals so, to compare.)"""
    start = time.perf_counter()
    device = torch.device(device)
    material = mesh.visual.material
    size = size or material.baseColorTexture.size[0]
    covered, points, normal, tangent, bitangent = texel_frames(mesh, size, device)
    target = field(points, normal)
    # coefficients of the fine normal in the texel's (t, b, n), which a shader turns back into it: solve, not project
    basis = torch.stack([tangent, bitangent, normal], dim=-1)  # columns
    ok = torch.linalg.det(basis).abs() > 1e-12
    basis = torch.where(ok[:, None, None], basis, torch.eye(3, device=device).expand_as(basis))
    local = torch.linalg.solve(basis, target[..., None])[..., 0]
    local = torch.where(ok[:, None], F.normalize(local, dim=-1, eps=1e-8), torch.tensor([0.0, 0.0, 1.0], device=device))
    image = torch.zeros(size, size, 3, device=device)
    image[..., 2] = 1.0
    image[covered] = local
    encoded = fill_outside((image * 0.5 + 0.5).cpu().numpy(), covered.cpu().numpy())
    out = mesh.copy()
    out.visual.material = material.copy()
    out.visual.material.normalTexture = Image.fromarray((encoded * 255 + 0.5).astype(np.uint8))
    if timings is not None:
        timings["normal_map"] = time.perf_counter() - start
    return out
