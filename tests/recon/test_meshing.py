"""Meshing: marching cubes of an analytic SDF gives a closed, outward, decimated surface without floaters."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from recon.errors import InputError
from recon.meshing import MeshConfig, extract_mesh, orient


def sphere_grid(n: int, centre=(0.0, 0.0, 0.0), radius: float = 0.6, extra: tuple | None = None):
    """SDF of a sphere (and optionally a second, small one) sampled on an n³ grid over [-1, 1]³, indexed [x, y, z]."""
    axis = np.linspace(-1, 1, n)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([x, y, z], -1)
    sdf = np.linalg.norm(points - np.array(centre), axis=-1) - radius
    if extra is not None:
        sdf = np.minimum(sdf, np.linalg.norm(points - np.array(extra[0]), axis=-1) - extra[1])
    return sdf.astype(np.float32), np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0])


def test_sphere_is_closed_outward_and_round():
    sdf, lo, hi = sphere_grid(64)
    mesh = extract_mesh(sdf, lo, hi, MeshConfig(faces=3000))
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    assert len(mesh.faces) <= 3000
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - 0.6) < 0.01  # Taubin smoothing does not shrink it
    assert radii.std() < 0.01
    # vertex normals point away from the centre
    assert (np.sum(mesh.vertex_normals * mesh.vertices, axis=1) > 0).mean() > 0.99


def test_floaters_are_dropped_but_real_parts_kept():
    sdf, lo, hi = sphere_grid(64, centre=(-0.3, 0, 0), radius=0.5, extra=((0.8, 0.8, 0.8), 0.06))
    mesh = extract_mesh(sdf, lo, hi, MeshConfig(faces=100000))
    assert len(mesh.split(only_watertight=False)) == 1
    assert np.linalg.norm(mesh.vertices - [0.8, 0.8, 0.8], axis=1).min() > 0.3
    sdf, lo, hi = sphere_grid(64, centre=(-0.4, 0, 0), radius=0.4, extra=((0.5, 0, 0), 0.3))
    mesh = extract_mesh(sdf, lo, hi, MeshConfig(faces=100000))
    assert len(mesh.split(only_watertight=False)) == 2  # a second object part, not a floater


def test_surface_cut_by_the_grid_border_is_closed():
    sdf, lo, hi = sphere_grid(48, radius=1.2)  # the sphere pokes out of the grid on every side
    mesh = extract_mesh(sdf, lo, hi, MeshConfig(faces=5000))
    assert mesh.is_watertight and mesh.volume > 0


def test_a_field_without_surface_is_refused():
    sdf = np.ones((16, 16, 16), np.float32)
    with pytest.raises(InputError, match="no surface"):
        extract_mesh(sdf, np.zeros(3), np.ones(3))


def test_a_thin_neck_pinched_by_decimation_still_comes_out_outward():
    axis = np.linspace(-1, 1, 64)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    balls = np.minimum(
        np.linalg.norm(points - [-0.5, 0, 0], axis=-1) - 0.35, np.linalg.norm(points - [0.5, 0, 0], axis=-1) - 0.35
    )
    neck = np.maximum(np.linalg.norm(points[..., 1:], axis=-1) - 0.03, np.abs(points[..., 0]) - 0.5)
    sdf = np.minimum(balls, neck).astype(np.float32)
    mesh = extract_mesh(sdf, -np.ones(3), np.ones(3), MeshConfig(faces=200))
    assert mesh.volume > 0
    outward = np.sum(mesh.vertex_normals * (mesh.vertices - np.sign(mesh.vertices[:, :1]) * [0.5, 0, 0]), axis=1)
    assert (outward > 0).mean() > 0.9


def test_orient_turns_an_inward_mesh_with_a_non_manifold_edge_outward():
    # Decimation can pinch thin parts into non-manifold edges: the mesh is then no volume in trimesh's strict sense.
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    sphere.invert()
    a, b = sphere.edges_unique[0]
    fin = (sphere.vertices[a] + sphere.vertices[b]) * 0.6
    mesh = trimesh.Trimesh(
        np.vstack([sphere.vertices, fin]), np.vstack([sphere.faces, [[a, b, len(sphere.vertices)]]]), process=False
    )
    assert not mesh.is_volume and mesh.volume < 0
    mesh = orient(mesh)
    assert mesh.volume > 0
    assert (np.sum(mesh.vertex_normals * mesh.vertices, axis=1) > 0).mean() > 0.99
