"""The visual hull of posed views: the floor any real reconstruction must beat.

Space carving needs nothing but masks and cameras: a point of [-bound, bound]^3 belongs to the object only if every
view sees it inside the silhouette. Concavities stay filled, so the hull is always too fat, which is exactly why it is
a good baseline. Instead of a binary grid we keep, per voxel, the k-th smallest mask value over the views (bilinear
lookups of the soft alpha; k = 1 + ``tolerance``): its 0.5 level set places the surface with sub-voxel accuracy, and
``tolerance`` views may disagree (k-of-n voting) before a voxel is carved, which helps when a mask is imperfect.
Voxels that project outside a view count as background there: Zero123++ views always show the whole object.

Colours come from the views, per vertex: each view's colour is weighted by how squarely it sees the vertex (cosine
between the vertex normal and the direction to the camera) and only counts where the vertex is visible there (its
depth agrees with the hull's own rendered depth), so the back side never borrows the front's colour.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recon.cameras import project_points, sample_image
from recon.posed_views import PosedViews


def carve(views: PosedViews, resolution: int = 128, bound: float = 1.0, tolerance: int = 0) -> np.ndarray:
    """Soft occupancy (resolution^3, float32 in [0, 1]) of the cube [-bound, bound]^3, indexed [x, y, z]."""
    if not 0 <= tolerance < len(views):
        raise ValueError(f"tolerance must be in [0, {len(views) - 1}], got {tolerance}")
    axis = torch.linspace(-bound, bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    samples = []
    for mask, k, c2w in zip(views.masks, views.intrinsics, views.cam_to_world, strict=True):
        uv, _ = project_points(points, k, c2w)
        samples.append(sample_image(torch.as_tensor(mask)[None].float(), uv)[:, 0])
    field = torch.stack(samples, dim=1).sort(dim=1).values[:, tolerance]
    return field.reshape(resolution, resolution, resolution).numpy()


def visual_hull(views: PosedViews, resolution: int = 128, bound: float = 1.0, tolerance: int = 0):
    """Visual hull of the views as a trimesh.Trimesh with per-vertex colours (largest connected piece only)."""
    import trimesh
    from skimage.measure import marching_cubes

    field = carve(views, resolution, bound, tolerance)
    if field.max() <= 0.5:
        raise ValueError("the masks carve away everything: no point is inside all silhouettes")
    padded = np.pad(field, 1)  # closed surface even where the object touches the cube
    spacing = 2 * bound / (resolution - 1)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, spacing=(spacing,) * 3)
    vertices = vertices - spacing - bound  # undo the padding, back to world coordinates
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        mesh = max(pieces, key=lambda piece: len(piece.faces))
    if mesh.volume < 0:
        mesh.invert()
    mesh.visual.vertex_colors = np.concatenate(
        [np.round(vertex_colors(mesh, views) * 255), np.full((len(mesh.vertices), 1), 255)], axis=1
    ).astype(np.uint8)
    return mesh


def vertex_colors(mesh, views: PosedViews, depth_tolerance: float = 0.01) -> np.ndarray:
    """Per-vertex RGB (V, 3) in [0, 1]: visibility-aware, view-angle weighted mean of the views' colours."""
    from recon.render import render_views

    height, width = views.size
    rendered = render_views(mesh, views.intrinsics, views.cam_to_world, width, height, "unlit", supersample=1)
    points = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32)
    normals = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
    total = torch.zeros(len(points), 3)
    weight = torch.zeros(len(points))
    fallback = torch.zeros(len(points), 3)
    for index in range(len(views)):
        k = torch.as_tensor(views.intrinsics[index], dtype=torch.float32)
        c2w = torch.as_tensor(views.cam_to_world[index], dtype=torch.float32)
        uv, depth = project_points(points, k, c2w)
        image = torch.as_tensor(views.images[index]).permute(2, 0, 1).float()
        color = sample_image(image, uv)
        seen_depth = sample_image(torch.as_tensor(rendered.depth[index])[None], uv)[:, 0]
        mask = sample_image(torch.as_tensor(views.masks[index])[None].float(), uv)[:, 0]
        facing = (F.normalize(c2w[:3, 3] - points, dim=1) * normals).sum(dim=1).clamp(min=0)
        visible = (depth - seen_depth).abs() < depth_tolerance * depth
        w = facing * mask * visible
        total += w[:, None] * color
        weight += w
        fallback += color / len(views)
    colors = torch.where(weight[:, None] > 1e-6, total / weight.clamp(min=1e-6)[:, None], fallback)
    return colors.clamp(0, 1).numpy()
