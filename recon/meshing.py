"""Field → clean triangle mesh: marching cubes, keep the object, smooth, decimate, fix normals.

Marching cubes on a grid whose border is outside the surface gives a closed, consistently wound surface; every later
step keeps it that way where it can: parts much smaller than the object are floaters and are dropped, Taubin
smoothing removes the grid's staircase without shrinking the object (plain Laplacian smoothing would), and quadric
decimation (fast-simplification) brings the face count to what a game engine and xatlas (superlinear in faces) want.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import trimesh

from recon.errors import InputError


@dataclass
class MeshConfig:
    """Mesh extraction and clean-up."""

    faces: int = 20000
    """Target face count after decimation (meshes with fewer faces are kept as they are)."""
    smoothing: Literal["taubin", "laplacian", "none"] = "taubin"
    """Surface smoothing after marching cubes: Taubin keeps the volume, Laplacian shrinks a little."""
    smoothing_iterations: int = 10
    """Smoothing passes."""
    min_part_share: float = 0.02
    """Connected parts with less than this share of the largest part's area are dropped as floaters."""


def extract_mesh(sdf: np.ndarray, lo: np.ndarray, hi: np.ndarray, config: MeshConfig | None = None) -> trimesh.Trimesh:
    """Zero level set of an SDF sampled on a grid ``[x, y, z]`` spanning the box ``lo``..``hi`` (corners included)."""
    from skimage.measure import marching_cubes

    config = config or MeshConfig()
    volume = np.pad(np.asarray(sdf, dtype=np.float32), 1, constant_values=1.0)  # closes surfaces cut by the border
    if not (volume.min() < 0 < volume.max()):
        raise InputError("The fitted field has no surface (the object vanished); check that the masks show an object.")
    spacing = (np.asarray(hi) - np.asarray(lo)) / (np.array(sdf.shape) - 1)
    vertices, faces, _, _ = marching_cubes(volume, level=0.0, spacing=tuple(spacing))
    vertices = vertices + np.asarray(lo) - spacing
    # skimage (gradient "descent", its default) winds counter-clockwise seen from where the field is positive.
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    mesh = keep_object(mesh, config.min_part_share)
    mesh = smooth(mesh, config.smoothing, config.smoothing_iterations)
    mesh = decimate(mesh, config.faces)
    return orient(mesh)


def keep_object(mesh: trimesh.Trimesh, min_share: float) -> trimesh.Trimesh:
    """Drop connected parts (faces linked through shared vertices) whose area is below ``min_share`` of the largest's.

    Labels faces by graph components instead of splitting the mesh into part meshes (``Trimesh.split`` builds and
    repairs one mesh per part: about a second for a 100k-face marching-cubes surface, this takes a few milliseconds).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = mesh.faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    n = len(mesh.vertices)
    graph = coo_matrix((np.ones(len(edges), dtype=bool), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    part = label[faces[:, 0]]
    area = np.bincount(part, weights=mesh.area_faces, minlength=count)
    keep = area[part] >= min_share * area.max()
    if keep.all():
        return mesh
    mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    return mesh


def smooth(mesh: trimesh.Trimesh, method: str, iterations: int) -> trimesh.Trimesh:
    """Taubin or Laplacian smoothing in place (returns the mesh)."""
    if method == "taubin" and iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=iterations)
    elif method == "laplacian" and iterations > 0:
        trimesh.smoothing.filter_laplacian(mesh, lamb=0.5, iterations=iterations)
    return mesh


def decimate(mesh: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """Quadric decimation to about ``faces`` faces (fast-simplification); smaller meshes pass through."""
    import fast_simplification

    if len(mesh.faces) <= faces:
        return mesh
    reduction = 1.0 - faces / len(mesh.faces)
    vertices, triangles = fast_simplification.simplify(
        mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), target_reduction=reduction
    )
    return trimesh.Trimesh(vertices, triangles, process=True)


def orient(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Consistent winding with outward normals (positive signed volume), degenerate faces removed.

    Quadric decimation can pinch thin parts into a few non-manifold edges, after which the mesh is no longer a volume
    in trimesh's strict sense (``is_volume``); its signed volume still tells outward from inward (the surface is closed
    but for the pinches), so the sign decides. An inward mesh would bake nothing (every texel faces away from every
    view) and be culled away by game engines.
    """
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()
    return mesh
