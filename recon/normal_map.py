"""Tangent-space normal map of the fitted surface's fine detail, baked onto a (decimated) UV-mapped mesh.

Decimating to a game budget (the ``lowpoly`` preset's 2k faces) flattens what the fitted signed-distance field still
knows: creases, bumps, the shape between the coarse mesh's vertices. The normal map keeps it as lighting detail:
every texel's surface point on the coarse mesh is moved onto the field's zero level set (a few steps down the SDF,
whose gradient is the way to the nearest surface), and the field's normal there is written in the texel's tangent
frame. The bake runs on the texel grid in torch, so it costs a few grid lookups per texel on the GPU.

The tangent frame is the one the exported file carries (glTF ``TANGENT``, written by :mod:`recon.export`): per-vertex
tangents along +u, Gram-Schmidt-orthogonalised against smooth vertex normals, with the handedness in ``w`` so that
the bitangent ``w · (n × t)`` points along +v (up the image, the glTF/OpenGL "+Y up" normal map convention). The
bake expresses the fine normal in the interpolated, unnormalised ``(t, b, n)`` of each texel, exactly as a shader
rebuilds it, so the map holds no bias of its own for whatever interpolation the importer uses. Vertex normals are
smooth across UV seams (vertices welded by position first), or every seam would show as a crease.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from recon.sdf_grid import SdfGrid, sample_grid, sdf_gradient
from recon.texture import fill_outside, rasterize_uv

#: Steps that move a texel's point onto the SDF's zero level set (each one ``p -= f(p) ∇f``, exact for a true
#: distance; two more than needed for points a voxel or two away, as a decimated mesh's are).
PROJECTION_STEPS = 4
#: A texel whose point ends farther than this many voxels from the zero level set (the coarse mesh bridges a gap the
#: field has) keeps the coarse normal: the field's surface there is not the one the texel shows.
MAX_OFFSET_VOXELS = 6.0


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


def fine_normals(grid: SdfGrid, points: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Unit normals (N, 3) of the field's zero level set near ``points`` (N, 3); ``coarse`` (N, 3) where there is no
    surface close by (:data:`MAX_OFFSET_VOXELS`) or where the nearest surface faces the other way."""
    device = points.device
    sdf = grid.sdf.detach().to(device)
    box = grid.box.to(device)
    gradient = sdf_gradient(sdf, grid.voxel)
    p = points
    for _ in range(PROJECTION_STEPS):
        direction = F.normalize(sample_grid(gradient, box, p), dim=-1, eps=1e-8)
        p = p - sample_grid(sdf, box, p) * direction
    normal = F.normalize(sample_grid(gradient, box, p), dim=-1, eps=1e-8)
    coarse = F.normalize(coarse, dim=-1, eps=1e-8)
    near = sample_grid(sdf, box, p)[:, 0].abs() < grid.voxel
    near &= (p - points).norm(dim=-1) < MAX_OFFSET_VOXELS * grid.voxel
    usable = near & ((normal * coarse).sum(-1) > 0)
    return torch.where(usable[:, None], normal, coarse)


def bake_normal_map(
    mesh: trimesh.Trimesh,
    grid: SdfGrid,
    size: int | None = None,
    device: str | torch.device = "cpu",
    timings: dict[str, float] | None = None,
) -> trimesh.Trimesh:
    """``mesh`` (UV-textured, world z-up, PBR material) with a tangent-space normal map of ``grid``'s surface added
    as the material's ``normalTexture`` (a copy; ``size`` defaults to the base colour texture's side)."""
    start = time.perf_counter()
    device = torch.device(device)
    material = mesh.visual.material
    size = size or material.baseColorTexture.size[0]
    covered, points, normal, tangent, bitangent = texel_frames(mesh, size, device)
    target = fine_normals(grid, points, normal)
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
