"""Meshing: marching cubes of an analytic SDF gives a closed, outward, decimated surface without floaters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from recon.errors import InputError
from recon.evaluation.mesh_checks import topology_defects
from recon.meshing import MeshConfig, decimate, extract_mesh, make_manifold, orient


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


# --- closed 2-manifold output: real fields at the default preset's resolution, and the defects decimation makes ---

MESHES = Path(__file__).resolve().parents[1] / "data" / "meshes"
CLEAN = {"boundary_edges": 0, "non_manifold_edges": 0, "non_manifold_vertices": 0}


def welded(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh as a game engine or trimesh sees it: vertices at one position are one vertex."""
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)


@pytest.fixture(scope="module", params=["wooden_table.glb", "painted_wooden_stool.glb"])
def real_sdf(request):
    """Exact SDF of a real test mesh (thin legs and rails) on a grid of 128 points along its longest side, the default
    preset's last grid stage, over its bounds padded by 4%: distances only next to the surface (marching cubes reads
    no other), capped at two voxels elsewhere."""
    import igl
    from scipy.ndimage import binary_dilation, binary_erosion

    from recon.evaluation.metrics import occupancy, world_geometry
    from recon.evaluation.oracle import load_mesh

    mesh = load_mesh(MESHES / request.param)
    geometry = world_geometry(mesh)
    lo, hi = geometry.bounds
    pad = 0.04 * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    shape = tuple(np.round(128 * (hi - lo) / (hi - lo).max()).astype(int))
    axes = [np.linspace(lo[k], hi[k], shape[k]) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    inside = occupancy(mesh, points).reshape(shape)
    band = binary_dilation(inside) & ~binary_erosion(inside)  # both sides of every sign change
    distance = np.full(shape, 2 * (hi - lo).max() / 127, dtype=np.float32)
    squared, _, _ = igl.point_mesh_squared_distance(
        points[band.reshape(-1)].astype(np.float64), np.asarray(geometry.vertices, np.float64), geometry.faces
    )
    distance[band] = np.sqrt(squared)
    return np.where(inside, -distance, distance), lo, hi


def test_default_mesh_of_a_real_field_is_a_closed_outward_manifold_of_the_target_size(real_sdf):
    config = MeshConfig()
    mesh = welded(extract_mesh(*real_sdf, config))
    assert topology_defects(mesh) == CLEAN
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.is_volume
    assert mesh.volume > 0  # outward
    assert 0.98 * config.faces <= len(mesh.faces) <= config.faces


# The stool's rails pinch under decimation; the table's legs, thicker, come through it clean.
@pytest.mark.parametrize("real_sdf", ["painted_wooden_stool.glb"], indirect=True)
def test_decimation_alone_leaves_the_defects_that_the_repair_removes(real_sdf):
    # what the test above guards against: quadric decimation of this field pinches and flattens thin parts
    sdf, lo, hi = real_sdf
    raw = extract_mesh(sdf, lo, hi, MeshConfig(faces=10**9))  # marching cubes and clean-up, no decimation
    decimated = welded(decimate(raw, MeshConfig().faces))
    assert topology_defects(decimated)["non_manifold_edges"] > 0
    repaired = welded(make_manifold(decimated))
    assert topology_defects(repaired) == CLEAN
    # the repair moves nothing but the cut vertices, by a fraction of an edge: the enclosed volume stays
    assert abs(orient(repaired).volume - abs(decimated.volume)) < 0.002 * abs(decimated.volume)


def boxes(offset) -> trimesh.Trimesh:
    """Two unit cubes, the second moved by ``offset``, as one mesh with the vertices they share welded."""
    first = trimesh.creation.box(bounds=[[0, 0, 0], [1, 1, 1]])
    second = trimesh.creation.box(bounds=[np.zeros(3) + offset, np.ones(3) + offset])
    return trimesh.util.concatenate([first, second]).process(validate=False)


def test_cubes_touching_along_an_edge_are_cut_apart():
    mesh = boxes([1.0, 1.0, 0.0])
    assert topology_defects(mesh) == {**CLEAN, "non_manifold_edges": 1}
    parts = welded(make_manifold(mesh)).split(only_watertight=False)
    assert len(parts) == 2
    for part in parts:
        assert topology_defects(part) == CLEAN and part.is_volume
        assert part.volume == pytest.approx(1.0, rel=0.05)  # the cut corners move a tenth of the way into their cube
    gap = np.linalg.norm(parts[0].vertices[:, None] - parts[1].vertices[None], axis=-1).min()
    assert 0 < gap < 0.2  # parted by a fraction of an edge


def test_cubes_touching_at_a_corner_are_cut_apart():
    mesh = boxes([1.0, 1.0, 1.0])
    assert topology_defects(mesh) == {**CLEAN, "non_manifold_vertices": 1}
    repaired = welded(make_manifold(mesh))
    assert topology_defects(repaired) == CLEAN and repaired.is_volume
    assert len(repaired.split(only_watertight=False)) == 2


def test_a_flattened_fin_cancels():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    a, b = sphere.edges_unique[0]
    tip = len(sphere.vertices)
    fin = trimesh.Trimesh(
        np.vstack([sphere.vertices, sphere.vertices[a] * 1.5]),
        np.vstack([sphere.faces, [[a, b, tip], [b, a, tip]]]),
        process=False,
    )
    assert topology_defects(fin)["non_manifold_edges"] == 1
    repaired = make_manifold(fin)
    assert topology_defects(repaired) == CLEAN
    assert len(repaired.faces) == len(sphere.faces) and len(repaired.vertices) == len(sphere.vertices)


def test_a_plate_squeezed_to_nothing_along_one_edge_keeps_its_sides_whole():
    # a 3 x 2 cell plate, 0.4 thick, whose top and bottom meet along the middle edge a-b: cutting the two solid wedges
    # on either side of a-b apart would leave them joined around a and b, so the sides are parted instead
    xs, ys = [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0]
    squeezed = {(1, 1), (2, 1)}
    vertices, index = [], {}
    for side, z in (("top", 0.2), ("bottom", -0.2)):
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                if side == "bottom" and (i, j) in squeezed:
                    index[side, i, j] = index["top", i, j]
                    continue
                index[side, i, j] = len(vertices)
                vertices.append([x, y, 0.0 if (i, j) in squeezed else z])
    faces = []
    for i in range(3):
        for j in range(2):
            t = [index["top", i + di, j + dj] for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1))]
            b = [index["bottom", i + di, j + dj] for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1))]
            faces += [[t[0], t[1], t[2]], [t[0], t[2], t[3]], [b[0], b[2], b[1]], [b[0], b[3], b[2]]]
    ring = [(i, 0) for i in range(3)] + [(3, j) for j in range(2)] + [(i, 2) for i in range(3, 0, -1)]
    ring += [(0, j) for j in range(2, 0, -1)]
    for p, q in zip(ring, ring[1:] + ring[:1], strict=True):
        t0, t1, b0, b1 = index["top", *p], index["top", *q], index["bottom", *p], index["bottom", *q]
        faces += [[b0, b1, t1], [b0, t1, t0]]
    plate = trimesh.Trimesh(np.array(vertices), np.array(faces), process=False)
    assert topology_defects(plate)["non_manifold_edges"] == 1 and plate.volume > 0
    repaired = welded(make_manifold(plate))
    assert topology_defects(repaired) == CLEAN and repaired.is_volume
    assert len(repaired.split(only_watertight=False)) == 1
    assert len(repaired.vertices) == len(plate.vertices) + 2  # a and b, once per side
    assert repaired.volume == pytest.approx(plate.volume, rel=0.05)
