"""Mesh → UV unwrap (xatlas) and base-colour texture baked from the posed views.

The views hold far more colour detail than any field fitted to them, so the texture is *projected* from them, not
read from the colour grid: each texel's surface point is projected into every view, kept where that view sees it
(its depth agrees with the mesh's own depth map from :func:`recon.render.rasterize`) and inside the view's eroded
mask (silhouette pixels mix in background), and weighted by ``cos(angle to the camera) ** angle_power`` so the most
frontal views dominate and grazing, stretched pixels barely count. Before blending, each view's colours are matched
to the other views' where they overlap (:func:`matched_colours`): generated views each have their own exposure, so
the most frontal view's would otherwise show as patches. Texels no view sees (a cavity, the underside) take the
fitted colour field's value. Finally every texel outside the charts takes the colour of its nearest texel inside, so
bilinear filtering and mip-maps never pull background colour across a seam.

Texel ↔ surface: the unwrapped mesh is rasterised in UV space (one texel per pixel centre, deterministic
``scatter_reduce`` to settle shared edges), giving each texel a face and barycentrics, hence a position and normal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image
from scipy import ndimage

from recon.config import TextureConfig
from recon.posed_views import PosedViews

#: Texel candidates per chunk of the UV rasteriser (bounds its memory, ~40 bytes each).
UV_CHUNK = 1 << 22


def bake_texture(
    mesh: trimesh.Trimesh,
    views: PosedViews,
    colour_field: Callable[[np.ndarray], np.ndarray],
    config: TextureConfig | None = None,
    device: str | torch.device = "cpu",
    timings: dict[str, float] | None = None,
) -> trimesh.Trimesh:
    """UV-unwrap ``mesh`` and bake a base-colour texture from ``views``; unseen texels from ``colour_field``.

    ``colour_field`` maps world points (N, 3) to RGB (N, 3) in [0, 1]. Returns a new mesh whose vertices are split
    along UV seams, with ``TextureVisuals`` holding the UVs and a PBR material with the texture.
    """
    config = config or TextureConfig()
    timings = {} if timings is None else timings
    start = time.perf_counter()
    vmapping, faces, uv = unwrap(mesh, config.size, config.padding, config.unwrap_pieces)
    timings["unwrap"] = time.perf_counter() - start

    start = time.perf_counter()
    device = torch.device(device)
    vertices = torch.as_tensor(mesh.vertices[vmapping], dtype=torch.float32, device=device)
    normals = torch.as_tensor(mesh.vertex_normals[vmapping], dtype=torch.float32, device=device)
    faces_t = torch.as_tensor(faces, dtype=torch.int64, device=device)
    face_id, bary = rasterize_uv(torch.as_tensor(uv, dtype=torch.float32, device=device), faces_t, config.size)
    covered = face_id >= 0
    corners = faces_t[face_id[covered]]
    b = bary[covered]
    points = (vertices[corners] * b[..., None]).sum(1)
    texel_normals = F.normalize((normals[corners] * b[..., None]).sum(1), dim=-1)
    colour, seen = project_views(mesh, views, points, texel_normals, config, device)
    unseen = ~seen
    if unseen.any():
        colour[unseen] = torch.as_tensor(colour_field(points[unseen].cpu().numpy()), dtype=torch.float32, device=device)
    image = torch.zeros(config.size, config.size, 3, device=device)
    image[covered] = colour
    texture = fill_outside(image.cpu().numpy(), covered.cpu().numpy())
    timings["bake"] = time.perf_counter() - start

    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray((texture * 255 + 0.5).astype(np.uint8)),
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(mesh.vertices[vmapping], faces, visual=visual, process=False)


def unwrap(
    mesh: trimesh.Trimesh, size: int, padding: int, pieces: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed into a ``size``² atlas: (vertex mapping, faces, UVs in [0, 1] with v up).

    With ``pieces`` > 1 the faces are first cut into that many compact pieces (:func:`split_faces`), each charted
    separately (in parallel) and all packed into the one atlas; a piece's border becomes a chart border.
    """
    import xatlas

    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    groups = split_faces(mesh, pieces)
    atlas = xatlas.Atlas()
    used = []
    for group in groups:
        piece_vertices, piece_faces = np.unique(faces[group], return_inverse=True)
        used.append(piece_vertices)
        atlas.add_mesh(vertices[piece_vertices], piece_faces.reshape(-1, 3).astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmappings, out_faces, uvs = [], [], []
    offset = 0
    for i, piece_vertices in enumerate(used):
        vmapping, piece_faces, uv = atlas[i]
        vmappings.append(piece_vertices[vmapping.astype(np.int64)])
        out_faces.append(piece_faces.astype(np.int64) + offset)
        uvs.append(uv)
        offset += len(vmapping)
    return np.concatenate(vmappings), np.concatenate(out_faces), np.concatenate(uvs).astype(np.float32)


#: Fewest faces per unwrap piece: below this xatlas is fast anyway and more cuts only add seams.
MIN_PIECE_FACES = 1000


def split_faces(mesh: trimesh.Trimesh, pieces: int) -> list[np.ndarray]:
    """Face indices of about ``pieces`` compact pieces of equal size (recursive median cuts across the longest side)."""
    pieces = max(1, min(pieces, len(mesh.faces) // MIN_PIECE_FACES))
    centres = np.asarray(mesh.triangles_center)

    def cut(index: np.ndarray, parts: int) -> list[np.ndarray]:
        if parts == 1:
            return [index]
        points = centres[index]
        axis = int(np.argmax(points.max(0) - points.min(0)))
        order = index[np.argsort(points[:, axis], kind="stable")]
        half = len(order) * (parts // 2) // parts
        return cut(order[:half], parts // 2) + cut(order[half:], parts - parts // 2)

    return cut(np.arange(len(mesh.faces)), pieces)


def rasterize_uv(uv: torch.Tensor, faces: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Face id (size, size) (-1 where empty) and barycentrics (size, size, 3) of every texel centre.

    Image row 0 is v = 1 (the top of the texture, as glTF and trimesh store it).
    """
    device = uv.device
    pixel = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], dim=-1)
    tri = pixel[faces]  # (F, 3, 2)
    lo = torch.ceil(tri.amin(1) - 0.5).clamp(0, size - 1).long()
    hi = torch.floor(tri.amax(1) - 0.5).clamp(0, size - 1).long()
    span = (hi - lo + 1).clamp_min(0)
    counts = span[:, 0] * span[:, 1]
    owner = torch.full((size * size,), -1, dtype=torch.int64, device=device)
    order = torch.arange(len(faces), device=device)
    ends = torch.cumsum(counts, 0)
    start = 0
    while start < len(faces):
        stop = int(torch.searchsorted(ends, ends[start] - counts[start] + UV_CHUNK, right=True))
        stop = max(stop, start + 1)
        ids = order[start:stop]
        n = counts[ids]
        face = torch.repeat_interleave(ids, n)
        offset = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        width = span[face, 0].clamp_min(1)
        x = lo[face, 0] + offset % width
        y = lo[face, 1] + offset // width
        b = _barycentrics(tri[face], x.float() + 0.5, y.float() + 0.5)
        inside = (b >= -1e-5).all(-1)
        owner.scatter_reduce_(0, (y * size + x)[inside], face[inside], reduce="amax")
        start = stop
    owner = owner.reshape(size, size)
    ys, xs = torch.nonzero(owner >= 0, as_tuple=True)
    bary = torch.zeros(size, size, 3, device=device)
    b = _barycentrics(tri[owner[ys, xs]], xs.float() + 0.5, ys.float() + 0.5).clamp_min(0)
    bary[ys, xs] = b / b.sum(-1, keepdim=True).clamp_min(1e-12)
    return owner, bary


def _barycentrics(tri: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Barycentrics (N, 3) of points in triangles ``tri`` (N, 3, 2); degenerate triangles give -1s (never inside)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = (b[:, 0] - px) * (c[:, 1] - py) - (b[:, 1] - py) * (c[:, 0] - px)
    w1 = (c[:, 0] - px) * (a[:, 1] - py) - (c[:, 1] - py) * (a[:, 0] - px)
    ok = area.abs() > 1e-12
    safe = torch.where(ok, area, torch.ones_like(area))
    l0, l1 = w0 / safe, w1 / safe
    out = torch.stack([l0, l1, 1 - l0 - l1], dim=-1)
    return torch.where(ok[:, None], out, torch.full_like(out, -1.0))


def project_views(
    mesh: trimesh.Trimesh,
    views: PosedViews,
    points: torch.Tensor,
    normals: torch.Tensor,
    config: TextureConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visibility- and angle-weighted mean colour (N, 3) of surface points over the views, and which were seen (N,)."""
    from recon.cameras import project_points, sample_image
    from recon.render import prepare_mesh, rasterize

    h, w = views.size
    fragments = rasterize(prepare_mesh(mesh, device), views.intrinsics, views.cam_to_world, w, h)
    masks = torch.as_tensor(views.masks, dtype=torch.float32, device=device)
    if config.mask_erosion > 0:
        k = 2 * config.mask_erosion + 1
        masks = -F.max_pool2d(-masks[:, None], k, stride=1, padding=config.mask_erosion)[:, 0]
    weights, colours, cosines, pixels = [], [], [], []
    for i in range(len(views)):
        uv, depth = project_points(points, views.intrinsics[i], views.cam_to_world[i])
        seen_depth = sample_image(fragments.depth[i][None], uv, mode="nearest")[:, 0]
        visible = (seen_depth > 0) & (depth <= seen_depth + config.depth_tolerance)
        to_camera = F.normalize(
            torch.as_tensor(views.cam_to_world[i][:3, 3], dtype=torch.float32, device=device) - points, dim=-1
        )
        cosine = (normals * to_camera).sum(-1).clamp_min(0)
        m = sample_image(masks[i][None], uv)[:, 0]
        weights.append(visible.float() * m * cosine**config.angle_power)
        cosines.append(cosine)
        image = torch.as_tensor(views.images[i], dtype=torch.float32, device=device).permute(2, 0, 1)
        colours.append(sample_image(image, uv))
        pixels.append(uv)
    weight = torch.stack(weights)
    colours = torch.stack(colours)
    if config.gain_cells > 1:
        at = torch.stack(pixels) / torch.tensor([w, h], device=device)
        colours = matched_colours(colours, weight, at, config.gain_cells)
    if config.frontal_softness > 0:
        # The most frontal seeing view dominates; others fade with their cosine's shortfall, continuously, so the
        # switch from one view to the next along the surface is a blend rather than a seam.
        cosine = torch.stack(cosines)
        best = torch.where(weight > 1e-4, cosine, torch.zeros_like(cosine)).amax(0)
        weight = weight * torch.exp(-(best - cosine).clamp_min(0) / config.frontal_softness)
    total = (colours * weight[..., None]).sum(0)
    weight = weight.sum(0)
    seen = weight > 1e-4
    colour = torch.where(seen[:, None], total / weight.clamp_min(1e-8)[:, None], torch.zeros_like(total))
    return colour.clamp(0, 1), seen


#: Rounds of gain matching; each moves every view half way to the others (the others move too).
GAIN_ROUNDS = 4
#: Points the gains are fitted on, at most (a stride through them).
GAIN_POINTS = 1 << 16
#: Log-colour RMS disagreement (~10 %) at which a view counts half in the others' mean: an outlier view is matched to
#: the rest, the rest are not pulled towards it.
GAIN_OUTLIER = 0.1


def matched_colours(colours: torch.Tensor, weights: torch.Tensor, at: torch.Tensor, cells: int) -> torch.Tensor:
    """Colours (V, N, 3) of N surface points in V views, each view's multiplied by a smooth gain per channel so that
    it agrees with the other views' weighted mean where both see the point (``weights`` (V, N), 0 where unseen).

    The gain is bilinear over ``cells`` nodes a side of the view (``at`` (V, N, 2): the points' image
    positions in units of the side), fitted in log colour by weighted least squares against the other views (a ridge
    keeps nodes that see no overlap at gain 1). Every view moves half way in each round, so the common colour is the
    views' average; a view that disagrees with the rest from the start counts less in it (:data:`GAIN_OUTLIER`).
    The gains are fitted on at most :data:`GAIN_POINTS` of the points (they are smooth), then applied to all.
    """
    dark = 4 / 255  # the log of nearly black pixels is mostly noise
    every = slice(None, None, max(1, colours.shape[1] // GAIN_POINTS))
    logs = colours[:, every].clamp_min(dark).log()
    weights = weights[:, every] * (colours[:, every].mean(-1) > dark)
    basis = gain_basis(at[:, every], cells)
    gains = torch.zeros(len(colours), cells * cells, 3, device=colours.device)
    eye = torch.eye(cells * cells, device=colours.device)
    trust = torch.ones(len(colours), 1, device=colours.device)
    for step in range(GAIN_ROUNDS + 1):  # the first round only weighs the views
        matched = logs - basis @ gains
        total_weight = (trust * weights).sum(0)
        total = (trust[..., None] * weights[..., None] * matched).sum(0)
        steps, spread = [], []
        for view in range(len(colours)):
            own = trust[view] * weights[view]
            others_weight = total_weight - own
            residual = matched[view] - (total - own[:, None] * matched[view]) / others_weight.clamp_min(1e-6)[:, None]
            pair = weights[view] * others_weight
            normal = basis[view].T @ (pair[:, None] * basis[view])
            ridge = 0.01 * pair.sum() / (cells * cells) + 1e-6
            steps.append(torch.linalg.solve(normal + ridge * eye, basis[view].T @ (pair[:, None] * residual)))
            spread.append((pair[:, None] * residual**2).sum() / (3 * pair.sum()).clamp_min(1e-12))
        if step == 0:
            trust = 1 / (1 + torch.stack(spread)[:, None] / GAIN_OUTLIER**2)
        else:
            gains = gains + 0.5 * torch.stack(steps)
    matched = colours * (-(gain_basis(at, cells) @ gains)).exp()
    return matched.where(colours > dark, colours).clamp(0, 1)


def gain_basis(at: torch.Tensor, cells: int) -> torch.Tensor:
    """(V, N, cells²) bilinear weights of a grid of ``cells`` nodes a side at image positions ``at`` (V, N, 2)."""
    ticks = torch.linspace(0, 1, cells, device=at.device)
    tent = (1 - (at[..., None] - ticks).abs() * (cells - 1)).clamp_min(0)  # (V, N, 2, cells)
    return (tent[:, :, 1, :, None] * tent[:, :, 0, None, :]).flatten(2)


def fill_outside(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every texel outside the charts takes its nearest covered texel's colour (seam-proof, mip-map-proof)."""
    if covered.all() or not covered.any():
        return image
    _, (iy, ix) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[iy, ix]
