"""Field → clean triangle mesh: marching cubes, keep the object, smooth, decimate, fix normals.

Marching cubes on a grid whose border is outside the surface gives a closed, consistently wound surface; every later
step keeps it that way where it can: parts much smaller than the object are floaters and are dropped, Taubin
smoothing removes the grid's staircase without shrinking the object (plain Laplacian smoothing would), and quadric
decimation (fast-simplification) brings the face count to what a game engine and xatlas (superlinear in faces) want.
Decimation does not keep the surface a 2-manifold (pinched edges, flattened fins), so :func:`make_manifold` repairs
what it breaks: cheaper than a manifold-keeping decimation such as Open3D's, which the GPU host lacks
(benchmarks/RESULTS.md has the comparison).
"""

from __future__ import annotations

import itertools

import numpy as np
import trimesh

from recon.config import MeshConfig
from recon.errors import InputError


def extract_mesh(sdf: np.ndarray, lo: np.ndarray, hi: np.ndarray, config: MeshConfig | None = None) -> trimesh.Trimesh:
    """Zero level set of an SDF sampled on a grid ``[x, y, z]`` spanning the box ``lo``..``hi`` (corners included)."""
    config = config or MeshConfig()
    return simplify(smoothed_surface(sdf, lo, hi, config), config.faces)


def smoothed_surface(
    sdf: np.ndarray, lo: np.ndarray, hi: np.ndarray, config: MeshConfig | None = None
) -> trimesh.Trimesh:
    """The first half of :func:`extract_mesh`: marching cubes, floaters dropped, smoothed; not decimated (meshes of
    several face counts from one field share it)."""
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
    return smooth(mesh, config.smoothing, config.smoothing_iterations)


def simplify(surface: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """The second half of :func:`extract_mesh`: ``surface`` decimated to about ``faces`` faces, made a closed
    2-manifold and wound outward (a new mesh; ``surface`` is left as it is)."""
    mesh = decimate(surface, faces)
    if mesh is surface:  # passed through undecimated: the repairs below work in place
        mesh = surface.copy()
    return orient(make_manifold(mesh))


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


def make_manifold(mesh: trimesh.Trimesh, nudge: float = 0.1, weld: float = 1e-6) -> trimesh.Trimesh:
    """A closed, consistently wound surface made 2-manifold: every edge in two faces, every vertex one fan of faces.

    Quadric decimation (fast-simplification has no topology check) leaves three kinds of defect where it collapses
    thin parts: vertices at one point (two quadric optima on a flat part; ``weld``, a share of the bounding-box
    diagonal, joins them and drops the faces that lose a corner), a thin spike or plate flattened into faces on the
    same three vertices with opposite windings (a zero-volume sheet, stuck to the surface along an edge: such faces
    cancel), and a thin neck pinched to an edge or a vertex where two solids touch. Pinches are cut: around an edge
    of more than two faces, faces are paired by the wedges between them (:func:`fan_of_corners`), and every vertex
    gets one copy per fan of faces joined through paired edges. The copies then move ``nudge`` of the way towards the
    centre of their own fan, so the solids part by a fraction of an edge instead of sharing a point (which welding by
    position, in trimesh or any game engine, would join again). Edge collapses keep every edge's two windings
    balanced, so the pairing completes and the surface stays closed.
    """
    vertices = np.asarray(mesh.vertices)
    faces = weld_vertices(vertices, np.asarray(mesh.faces), weld * float(np.linalg.norm(np.ptp(vertices, axis=0))))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    faces = cancel_opposite_faces(faces)
    corner_vertex, fan = fan_of_corners(vertices, faces)
    count = int(fan.max()) + 1 if len(fan) else 0
    if count == len(vertices) and np.array_equal(faces, mesh.faces):
        return mesh
    original = np.zeros(count, dtype=np.int64)
    original[fan] = corner_vertex
    positions = vertices[original]
    split = np.bincount(original, minlength=len(vertices))[original] > 1
    if split.any():
        centroids = vertices[faces].mean(axis=1).repeat(3, axis=0)
        corners = np.bincount(fan, minlength=count)[:, None]
        centre = np.stack([np.bincount(fan, weights=centroids[:, k], minlength=count) for k in range(3)], 1) / corners
        positions[split] += nudge * (centre[split] - positions[split])
    return trimesh.Trimesh(positions, fan.reshape(-1, 3), process=False)


def weld_vertices(vertices: np.ndarray, faces: np.ndarray, tolerance: float) -> np.ndarray:
    """Faces re-indexed so that vertices within ``tolerance`` of each other (transitively) are one vertex."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    close = cKDTree(vertices).query_pairs(tolerance, output_type="ndarray")
    if len(close) == 0:
        return faces
    n = len(vertices)
    graph = coo_matrix((np.ones(len(close), dtype=bool), (close[:, 0], close[:, 1])), shape=(n, n))
    label = connected_components(graph, directed=False)[1]
    _, first = np.unique(label, return_index=True)  # each group's lowest vertex stands for it
    return first[label][faces]


def cancel_opposite_faces(faces: np.ndarray) -> np.ndarray:
    """Faces on the same three vertices cancel in pairs of opposite winding (a zero-volume sheet)."""
    n = int(faces.max()) + 1 if len(faces) else 1
    ordered = np.sort(faces, axis=1).astype(np.int64)
    _, group, counts = np.unique(
        (ordered[:, 0] * n + ordered[:, 1]) * n + ordered[:, 2], return_inverse=True, return_counts=True
    )
    repeated = np.flatnonzero(counts[group] > 1)
    if len(repeated) == 0:
        return faces
    # +1 where the winding is an even permutation of the sorted vertices, -1 where it is odd
    first = np.argmin(faces[repeated], axis=1)
    rolled = np.take_along_axis(faces[repeated], (first[:, None] + np.arange(3)) % 3, axis=1)
    sign = np.where(rolled[:, 1] < rolled[:, 2], 1, -1)
    keep = np.ones(len(faces), dtype=bool)
    keep[repeated] = False
    net = np.bincount(group[repeated], weights=sign, minlength=len(counts)).astype(np.int64)
    for face, g, s in zip(repeated.tolist(), group[repeated].tolist(), sign.tolist(), strict=True):
        if net[g] * s > 0:  # the copies that cancellation leaves: |net| faces of the surplus winding
            keep[face] = True
            net[g] -= s
    return faces[keep]


def fan_of_corners(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex and fan label of every face corner (row-major): corners of one vertex share a fan when their faces join
    at an edge through that vertex, edges of more than two faces joining only the faces paired around them.

    Faces around such an edge are first paired across their solid wedges (:func:`pairings_around_edge`), which parts
    two solids that touch along the edge. Where an edge then still joins more than two faces between the same two
    fans (say a plate squeezed to nothing along one edge: its two sides stay joined around both ends), its next
    pairing is tried (across the empty wedges, which keeps each side of the plate whole and parts the sides; then
    the others) until the edge parts.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    source = faces.reshape(-1)  # half-edge h = 3 * face + k runs from corner h to corner `following[h]`
    following = (np.arange(len(source)).reshape(-1, 3)[:, [1, 2, 0]]).reshape(-1)
    target = source[following]
    key = np.minimum(source, target).astype(np.int64) * (int(source.max()) + 1) + np.maximum(source, target)
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    # ordinary edges: two half-edges running opposite ways
    two = starts[sizes == 2]
    h0, h1 = order[two], order[two + 1]
    ordinary = source[h0] == target[h1]
    odd = sizes != 2
    irregular = [order[k : k + size] for k, size in zip(starts[odd].tolist(), sizes[odd].tolist(), strict=True)]
    irregular += [order[k : k + 2] for k in two[~ordinary].tolist()]
    candidates = [pairings_around_edge(vertices, source, target, group) for group in irregular]
    choice = [0] * len(irregular)
    pairs = [np.stack([h0[ordinary], h1[ordinary]], 1)] + [options[0] for options in candidates]

    def label() -> np.ndarray:
        # a paired half-edge a→b and its partner b→a: a's corners of the two faces are one fan, and so are b's
        a, b = np.concatenate(pairs).T
        rows, cols = np.concatenate([a, following[a]]), np.concatenate([following[b], b])
        graph = coo_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(len(source), len(source)))
        return connected_components(graph, directed=False)[1]

    fan = label()
    while True:
        stuck = [
            k
            for k, group in enumerate(irregular)
            if choice[k] + 1 < len(candidates[k]) and shared_by_more_than_two(fan, following, group)
        ]
        if not stuck:
            return source, fan
        for k in stuck:
            choice[k] += 1
            pairs[1 + k] = candidates[k][choice[k]]
        fan = label()


def shared_by_more_than_two(fan: np.ndarray, following: np.ndarray, half_edges: np.ndarray) -> bool:
    """Whether some edge between two fans carries more than two of these half-edges."""
    ends = np.sort(np.stack([fan[half_edges], fan[following[half_edges]]], 1), axis=1)
    return bool(np.unique(ends, axis=0, return_counts=True)[1].max() > 2)


def pairings_around_edge(
    vertices: np.ndarray, source: np.ndarray, target: np.ndarray, half_edges: np.ndarray
) -> list[np.ndarray]:
    """Ways (each (k, 2) pairs of opposite half-edges) to pair the faces around one edge, best first.

    Turning about the edge a→b by the right-hand rule, a face winding a→b has its normal ahead of it and its solid
    side behind it, a face winding b→a the other way round. First: each a→b face pairs with the nearest face behind
    it when that face winds b→a, paired faces leave the circle, and so on (balanced windings always pair up
    completely), which pairs faces across solid wedges; second, the same ahead (across empty wedges); then, on edges
    of up to eight faces, every other pairing of a→b with b→a faces.
    """
    a = int(min(source[half_edges[0]], target[half_edges[0]]))
    b = int(max(source[half_edges[0]], target[half_edges[0]]))
    axis = vertices[b] - vertices[a]
    axis = axis / max(np.linalg.norm(axis), 1e-30)
    third = source[half_edges - half_edges % 3 + (half_edges + 2) % 3]  # the faces' corners off the edge
    spokes = vertices[third] - vertices[a]
    spokes = spokes - np.outer(spokes @ axis, axis)
    reference = spokes[0] / max(np.linalg.norm(spokes[0]), 1e-30)
    angle = np.arctan2(spokes @ np.cross(axis, reference), spokes @ reference)
    forward = source[half_edges] == a
    options = []
    for turn in (np.argsort(angle, kind="stable"), np.argsort(-angle, kind="stable")):
        ring = list(zip(half_edges[turn].tolist(), forward[turn].tolist(), strict=True))
        pairs = []
        while len(ring) > 1:
            for k, (h, ahead) in enumerate(ring):
                behind, behind_ahead = ring[k - 1]
                if ahead and not behind_ahead:
                    pairs.append((h, behind))
                    ring = [item for item in ring if item[0] not in (h, behind)]
                    break
            else:
                break
        options.append(sorted(pairs))
    ahead, behind = half_edges[forward].tolist(), half_edges[~forward].tolist()
    if len(ahead) == len(behind) <= 4:
        options += [sorted(zip(ahead, other, strict=True)) for other in itertools.permutations(behind)]
    unique = list(dict.fromkeys(tuple(option) for option in options))
    return [np.array(option, dtype=np.int64).reshape(-1, 2) for option in unique]


def orient(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Consistent winding with outward normals (positive signed volume), in place (returns the mesh).

    The signed volume of a closed surface tells outward from inward (and still does with a few pinches, for meshes
    not of :func:`extract_mesh`'s making). An inward mesh would bake nothing (every texel faces away from every view)
    and be culled away by game engines. Faces of zero area stay: the surface is closed through them.
    """
    trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()
    return mesh
