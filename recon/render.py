"""A deterministic, headless triangle rasteriser in pure PyTorch: the ground-truth renderer of img2mesh.

Why our own: reconstruction is measured on "oracle views" (a real mesh rendered exactly at the Zero123++ poses), and
its texture baking and novel-view checks need face ids and depths at arbitrary cameras. OpenGL/EGL renderers are not
available headless on the CI machines, and nvdiffrast needs a CUDA build; a PyTorch rasteriser runs identically on the
CPU (CI) and on CUDA (fast), and is exactly repeatable.

How: every triangle is projected with the cameras of :mod:`recon.cameras` (OpenGL camera-to-world, pixel centres at
``i + 0.5``), its pixel bounding box is expanded into candidate pixels, and the nearest candidate per pixel wins a
z-buffer built with one ``scatter_reduce(amin)`` over keys that pack the quantised depth above the face id (ties go to
the lower face id, so the result never depends on scatter order). Candidates are processed in chunks, which bounds
memory for large meshes. The winning face's barycentrics are recomputed per pixel and made perspective-correct, then
UVs, vertex colours and normals are interpolated; textures are looked up with ``grid_sample`` (bilinear, repeat wrap).

Appearance model (deliberately simple and view independent, so that all views of an object agree photometrically):
albedo = texture x base colour factor (glTF) or the texture alone (OBJ ``map_Kd``, whose ``Kd`` is commonly ignored)
or the material/vertex colour; a mesh with no colour at all gets a light clay albedo. ``lighting="lit"`` multiplies
the albedo by ``AMBIENT + DIFFUSE * max(0, n . l)`` for one fixed world-space direction ``LIGHT_DIRECTION`` (upper
front, as seen by the input photo); ``"unlit"`` returns the albedo. Colours are treated as sRGB values throughout
(no linearisation): the oracle only needs to be consistent, not physically exact. Materials marked unlit
(KHR_materials_unlit, e.g. the cake) are lit like the rest, so that every oracle object carries shading cues.
Faces are two-sided; a face seen from behind is shaded with its normal flipped (this only matters for open meshes).

Anti-aliasing: ``supersample=s`` renders at ``s`` times the resolution (intrinsics scaled accordingly) and box-filters,
which gives fractional alpha along silhouettes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from recon.cameras import project_points

Lighting = Literal["lit", "unlit"]

#: Unit direction towards the fixed light, world z-up: from above and in front of the input view (+X).
LIGHT_DIRECTION = np.array([0.6, 0.25, 0.76]) / np.linalg.norm([0.6, 0.25, 0.76])
#: Ambient and diffuse weights of the fixed light (their sum is 1: a face lit head-on shows its albedo).
AMBIENT, DIFFUSE = 0.45, 0.55
#: Albedo of a mesh that defines no colour at all (light clay), chosen to stand out from a gray 127 background.
DEFAULT_ALBEDO = (0.82, 0.76, 0.68)
#: Candidate pixels processed per chunk: bounds peak memory (roughly 100 bytes per candidate).
MAX_CANDIDATES = 1 << 22
#: Tolerance on barycentrics for the inside test, so that pixel centres on shared edges are never lost to rounding.
INSIDE_EPS = 1e-5
_KEY_FACE_BITS = 32
_DEPTH_LEVELS = (1 << 30) - 1
_EMPTY = torch.iinfo(torch.int64).max


@dataclass
class RenderMesh:
    """A mesh or scene flattened into world-space triangles with per-corner attributes, ready to rasterise."""

    vertices: torch.Tensor
    """World positions, float32 (V, 3)."""
    faces: torch.Tensor
    """Vertex indices, int64 (F, 3)."""
    corner_normals: torch.Tensor
    """World unit normals per face corner, float32 (F, 3, 3)."""
    corner_uv: torch.Tensor
    """Texture coordinates per face corner (trimesh convention: v = 0 at the image bottom), float32 (F, 3, 2)."""
    corner_colors: torch.Tensor
    """Base colour per face corner (vertex/material colour, or the factor a texture is multiplied by), (F, 3, 3)."""
    face_part: torch.Tensor
    """Index of the part (scene node) each face belongs to, int64 (F,)."""
    textures: list[torch.Tensor | None]
    """Per part: its base colour texture, float32 (1, 3, H, W) in [0, 1], or None."""

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device: str | torch.device) -> RenderMesh:
        """The same mesh on another device."""
        return RenderMesh(
            self.vertices.to(device),
            self.faces.to(device),
            self.corner_normals.to(device),
            self.corner_uv.to(device),
            self.corner_colors.to(device),
            self.face_part.to(device),
            [None if t is None else t.to(device) for t in self.textures],
        )


@dataclass
class Fragments:
    """What the rasteriser sees per pixel, for B cameras (torch tensors on the render device)."""

    face_id: torch.Tensor
    """Index of the visible face, int64 (B, H, W); -1 where no face covers the pixel centre."""
    bary: torch.Tensor
    """Perspective-correct barycentrics of the pixel centre in the visible face, float32 (B, H, W, 3)."""
    depth: torch.Tensor
    """Distance along the viewing axis, float32 (B, H, W); 0 where empty."""
    camera_centres: torch.Tensor
    """World position of each camera, float32 (B, 3)."""


@dataclass
class Render:
    """An image of a mesh: colour composited on the background, coverage and depth (numpy float32)."""

    rgb: np.ndarray
    """Colour composited over the background, (H, W, 3) or (B, H, W, 3), in [0, 1]."""
    alpha: np.ndarray
    """Coverage in [0, 1] (fractional along silhouettes when supersampled), (H, W) or (B, H, W)."""
    depth: np.ndarray
    """Distance along the viewing axis, mean over covered subsamples; 0 where alpha is 0. (H, W) or (B, H, W)."""


def world_parts(mesh) -> list[tuple[object, np.ndarray]]:
    """The (geometry, 4x4 world transform) pairs of a trimesh Scene or Trimesh; non-triangle geometry is skipped."""
    import trimesh

    if isinstance(mesh, trimesh.Trimesh):
        return [(mesh, np.eye(4))]
    if not isinstance(mesh, trimesh.Scene):
        raise TypeError(f"expected a trimesh.Trimesh or trimesh.Scene, got {type(mesh).__name__}")
    parts = []
    for node in mesh.graph.nodes_geometry:
        transform, name = mesh.graph[node]
        geometry = mesh.geometry[name]
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            parts.append((geometry, np.asarray(transform, dtype=np.float64)))
    return parts


def world_geometry(mesh):
    """All triangles of a Scene or Trimesh in world space, as one plain (uncoloured, unmerged) Trimesh."""
    import trimesh

    vertices, faces, offset = [], [], 0
    for geometry, transform in world_parts(mesh):
        vertices.append(trimesh.transform_points(geometry.vertices, transform))
        faces.append(np.asarray(geometry.faces) + offset)
        offset += len(geometry.vertices)
    if not vertices:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), process=False)


def _texture_tensor(image, max_size: int) -> torch.Tensor:
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > max_size:  # no mip-maps: pre-shrink huge textures so minification does not alias
        scale = max_size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BOX)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _part_appearance(geometry, faces: np.ndarray, max_texture_size: int):
    """(corner UVs (F, 3, 2) or None, corner colours (F, 3, 3), texture or None) of one trimesh geometry."""
    visual = geometry.visual
    n_faces = len(faces)
    if visual.kind == "vertex":
        return None, np.asarray(visual.vertex_colors, np.float32)[faces, :3] / 255.0, None
    if visual.kind == "face":
        return None, np.repeat(np.asarray(visual.face_colors, np.float32)[:, None, :3] / 255.0, 3, axis=1), None
    material = getattr(visual, "material", None)
    if material is None:  # no colour defined anywhere
        return None, np.broadcast_to(np.float32(DEFAULT_ALBEDO), (n_faces, 3, 3)).copy(), None
    uv = getattr(visual, "uv", None)
    uv = None if uv is None or len(uv) != len(geometry.vertices) else np.asarray(uv, np.float32)
    image, factor = None, np.ones(3, np.float32)
    if hasattr(material, "baseColorFactor"):  # glTF PBR: texture x factor
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = np.asarray(material.baseColorFactor, np.float32)[:3] / 255.0
    else:  # OBJ/MTL: map_Kd replaces Kd
        image = getattr(material, "image", None)
        if image is None and getattr(material, "diffuse", None) is not None:
            factor = np.asarray(material.diffuse, np.float32)[:3] / 255.0
    texture = _texture_tensor(image, max_texture_size) if image is not None and uv is not None else None
    corner_uv = None if uv is None else uv[faces]
    return corner_uv, np.broadcast_to(factor, (n_faces, 3, 3)).copy(), texture


def prepare_mesh(mesh, device: str | torch.device = "cpu", max_texture_size: int = 2048) -> RenderMesh:
    """Flatten a trimesh Scene/Trimesh (node transforms applied) into a :class:`RenderMesh` on ``device``."""
    if isinstance(mesh, RenderMesh):
        return mesh.to(device)
    vertices, faces, normals, uvs, colors, part_ids, textures = [], [], [], [], [], [], []
    offset = 0
    for index, (geometry, transform) in enumerate(world_parts(mesh)):
        f = np.asarray(geometry.faces, dtype=np.int64)
        v = np.asarray(geometry.vertices, dtype=np.float64) @ transform[:3, :3].T + transform[:3, 3]
        normal_matrix = np.linalg.inv(transform[:3, :3]).T
        vn = np.asarray(geometry.vertex_normals, dtype=np.float64) @ normal_matrix.T
        vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
        flipped = np.linalg.det(transform[:3, :3]) < 0
        if flipped:  # a mirroring transform flips the winding; keep outward normals by re-winding
            f = f[:, ::-1].copy()
        uv, corner_color, texture = _part_appearance(geometry, np.asarray(geometry.faces), max_texture_size)
        vertices.append(v)
        faces.append(f + offset)
        normals.append(vn[f])  # f is already re-wound, so corners stay matched
        uvs.append(np.zeros((len(f), 3, 2), np.float32) if uv is None else uv[:, ::-1] if flipped else uv)
        colors.append(corner_color[:, ::-1] if flipped else corner_color)
        part_ids.append(np.full(len(f), index, dtype=np.int64))
        textures.append(texture)
        offset += len(v)
    if not faces:
        raise ValueError("the mesh has no triangles to render")

    def tensor(arrays, dtype=torch.float32):
        return torch.from_numpy(np.concatenate(arrays)).to(device=device, dtype=dtype)

    return RenderMesh(
        vertices=tensor(vertices),
        faces=tensor(faces, torch.int64),
        corner_normals=tensor(normals),
        corner_uv=tensor(uvs),
        corner_colors=tensor(colors),
        face_part=tensor(part_ids, torch.int64),
        textures=[None if t is None else t.to(device) for t in textures],
    )


def _as_batch(intrinsics, cam_to_world, device) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32, device=device)
    c2w = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float32, device=device)
    if k.ndim == 2:
        k = k[None]
    if c2w.ndim == 2:
        c2w = c2w[None]
    if k.shape[1:] != (3, 3) or c2w.shape[1:] != (4, 4) or k.shape[0] != c2w.shape[0]:
        raise ValueError(
            f"intrinsics must be (3, 3)/(B, 3, 3) and cam_to_world (4, 4)/(B, 4, 4), got {k.shape}, {c2w.shape}"
        )
    return k, c2w


def _plane_coefficients(tri: torch.Tensor, tri_depth: torch.Tensor) -> torch.Tensor:
    """Per triangle (T, 9): origin (x0, y0), gradients of the screen barycentrics w1, w2, and of 1/depth.

    Barycentrics and inverse depth are affine in screen space, so each candidate costs a few multiply-adds;
    measuring from the triangle's first vertex keeps float32 precise for small triangles far from the origin.
    """
    x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
    e1x, e1y = tri[:, 1, 0] - x0, tri[:, 1, 1] - y0
    e2x, e2y = tri[:, 2, 0] - x0, tri[:, 2, 1] - y0
    area = e1x * e2y - e2x * e1y
    area = torch.where(area.abs() > 1e-12, area, torch.full_like(area, 1e-12))
    inv = 1.0 / tri_depth.clamp(min=1e-12)
    return torch.stack(
        [
            x0,
            y0,
            e2y / area,
            -e2x / area,
            -e1y / area,
            e1x / area,
            inv[:, 0],
            inv[:, 1] - inv[:, 0],
            inv[:, 2] - inv[:, 0],
        ],
        dim=1,
    )


def _evaluate(coef: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen barycentrics (N, 3) and inverse depth (N,) at pixel coordinates, from gathered coefficients (N, 9)."""
    dx, dy = px - coef[:, 0], py - coef[:, 1]
    w1 = coef[:, 2] * dx + coef[:, 3] * dy
    w2 = coef[:, 4] * dx + coef[:, 5] * dy
    inv_depth = coef[:, 6] + coef[:, 7] * w1 + coef[:, 8] * w2
    return torch.stack([1 - w1 - w2, w1, w2], dim=1), inv_depth


def rasterize(
    mesh: RenderMesh,
    intrinsics,
    cam_to_world,
    width: int,
    height: int,
    near: float = 1e-3,
    max_candidates: int = MAX_CANDIDATES,
) -> Fragments:
    """Visible face, perspective-correct barycentrics and depth per pixel centre for B cameras.

    Triangles with a vertex closer than ``near`` (or behind the camera) are dropped rather than clipped: the orbit
    cameras of img2mesh always see the whole object.
    """
    device = mesh.device
    k, c2w = _as_batch(intrinsics, cam_to_world, device)
    b, n_faces = k.shape[0], mesh.faces.shape[0]
    screen, depth = project_points(mesh.vertices, k, c2w)
    tri = screen[:, mesh.faces].reshape(-1, 3, 2)  # (B*F, 3, 2): camera-major
    tri_depth = depth[:, mesh.faces].reshape(-1, 3)
    # candidate pixels: centres i + 0.5 within the triangle's bounding box, clipped to the image
    lo = torch.ceil(tri.amin(dim=1) - 0.5).clamp(min=0)
    hi = torch.floor(tri.amax(dim=1) - 0.5)
    hi = torch.minimum(hi, torch.tensor([width - 1.0, height - 1.0], device=device))
    span = (hi - lo + 1).clamp(min=0).to(torch.int64)
    counts = span[:, 0] * span[:, 1]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    keep = (tri_depth.amin(dim=1) > near) & (counts > 0) & (area.abs() > 1e-12)
    tri_ids = torch.nonzero(keep).squeeze(1)
    coef = _plane_coefficients(tri, tri_depth)
    far = float(tri_depth[tri_ids].max()) * 1.001 + near if tri_ids.numel() else 1.0

    zbuffer = torch.full((b * height * width,), _EMPTY, dtype=torch.int64, device=device)
    if tri_ids.numel():
        ends = torch.cumsum(counts[tri_ids], 0)
        start = 0
        while start < tri_ids.numel():
            # take triangles until the candidate budget is reached (at least one)
            base = ends[start - 1] if start else ends.new_zeros(())
            stop = max(int(torch.searchsorted(ends, base + max_candidates, right=True)), start + 1)
            ids = tri_ids[start:stop]
            _scatter_chunk(zbuffer, ids, coef, lo[ids].to(torch.int64), span[ids], n_faces, width, height, near, far)
            start = stop

    face_flat = torch.where(zbuffer == _EMPTY, -1, zbuffer & ((1 << _KEY_FACE_BITS) - 1))
    bary = torch.zeros(b * height * width, 3, device=device)
    depth_out = torch.zeros(b * height * width, device=device)
    covered = torch.nonzero(face_flat >= 0).squeeze(1)
    if covered.numel():
        pixel = covered % (height * width)
        global_tri = (covered // (height * width)) * n_faces + face_flat[covered]
        lam, _ = _evaluate(coef[global_tri], (pixel % width).float() + 0.5, (pixel // width).float() + 0.5)
        weights = lam.clamp(min=0) / tri_depth[global_tri].clamp(min=1e-12)  # perspective correction
        total = weights.sum(dim=1, keepdim=True)
        bary[covered] = weights / total
        depth_out[covered] = 1.0 / total.squeeze(1)
    return Fragments(
        face_id=face_flat.view(b, height, width),
        bary=bary.view(b, height, width, 3),
        depth=depth_out.view(b, height, width),
        camera_centres=c2w[:, :3, 3],
    )


def _scatter_chunk(zbuffer, ids, coef, lo, span, n_faces, width, height, near, far) -> None:
    """Test the candidate pixels of triangles ``ids`` (indices into the camera-major B*F list); z-buffer the hits.

    Candidates are found row by row: on the centre line of a pixel row the triangle covers one interval of x, so
    only that interval (widened by a pixel against rounding) is expanded, not the whole bounding box.
    """
    device = zbuffer.device
    row_owner = torch.repeat_interleave(torch.arange(ids.numel(), device=device), span[:, 1])
    row_index = torch.arange(row_owner.numel(), device=device) - (torch.cumsum(span[:, 1], 0) - span[:, 1])[row_owner]
    py = lo[row_owner, 1] + row_index
    c = coef[ids][row_owner]
    dy = py.float() + 0.5 - c[:, 1]
    # barycentric i along the row: slope[i] * (px - x0) + offset[i]
    slope = torch.stack([-(c[:, 2] + c[:, 4]), c[:, 2], c[:, 4]], dim=1)
    offset_1, offset_2 = c[:, 3] * dy, c[:, 5] * dy
    offset = torch.stack([1 - offset_1 - offset_2, offset_1, offset_2], dim=1)
    bound = (-INSIDE_EPS - offset) / torch.where(slope == 0, torch.ones_like(slope), slope)
    inf = torch.full_like(bound, float("inf"))
    left = torch.where(slope > 0, bound, -inf).amax(dim=1)
    right = torch.where(slope < 0, bound, inf).amin(dim=1)
    empty_row = ((slope == 0) & (offset < -INSIDE_EPS)).any(dim=1)
    x_first = torch.ceil((c[:, 0] + left - 0.5).clamp(-1.0, width + 1.0)).to(torch.int64) - 1
    x_last = torch.floor((c[:, 0] + right - 0.5).clamp(-2.0, width + 1.0)).to(torch.int64) + 1
    x_first = torch.maximum(x_first, lo[row_owner, 0])
    x_last = torch.minimum(x_last, lo[row_owner, 0] + span[row_owner, 0] - 1)
    counts = torch.where(empty_row, 0, (x_last - x_first + 1).clamp(min=0))

    owner = torch.repeat_interleave(torch.arange(row_owner.numel(), device=device), counts)
    px = x_first[owner] + torch.arange(owner.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[owner]
    py = py[owner]
    tri_owner = row_owner[owner]
    lam, inv_depth = _evaluate(c[owner], px.float() + 0.5, py.float() + 0.5)
    inside = torch.nonzero((lam >= -INSIDE_EPS).all(dim=1)).squeeze(1)
    tri_id = ids[tri_owner[inside]]
    depth = 1.0 / inv_depth[inside].clamp(min=1e-12)
    level = ((depth - near) / (far - near)).clamp(0, 1) * _DEPTH_LEVELS
    key = (level.to(torch.int64) << _KEY_FACE_BITS) | (tri_id % n_faces)
    pixel = ((tri_id // n_faces) * height + py[inside]) * width + px[inside]
    zbuffer.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)


def shade(mesh: RenderMesh, fragments: Fragments, lighting: Lighting = "lit") -> tuple[torch.Tensor, torch.Tensor]:
    """Colour (B, H, W, 3) and coverage (B, H, W) of rasterised fragments (colour 0 where not covered)."""
    if lighting not in ("lit", "unlit"):
        raise ValueError(f"lighting must be 'lit' or 'unlit', got {lighting!r}")
    b, h, w = fragments.face_id.shape
    face = fragments.face_id.reshape(-1)
    color = torch.zeros(face.numel(), 3, device=mesh.device)
    covered = torch.nonzero(face >= 0).squeeze(1)
    if covered.numel():
        f = face[covered]
        bary = fragments.bary.reshape(-1, 3)[covered, :, None]
        albedo = (mesh.corner_colors[f] * bary).sum(dim=1)
        uv = (mesh.corner_uv[f] * bary).sum(dim=1)
        part = mesh.face_part[f]
        for index, texture in enumerate(mesh.textures):
            if texture is None:
                continue
            sel = torch.nonzero(part == index).squeeze(1)
            if sel.numel():
                albedo[sel] *= _sample_texture(texture, uv[sel])
        if lighting == "lit":
            normal = facing_normals(mesh, fragments, covered)
            light = torch.as_tensor(LIGHT_DIRECTION, dtype=torch.float32, device=mesh.device)
            albedo = albedo * (AMBIENT + DIFFUSE * (normal @ light).clamp(min=0))[:, None]
        color[covered] = albedo.clamp(0, 1)
    return color.view(b, h, w, 3), (fragments.face_id >= 0).float()


def facing_normals(mesh: RenderMesh, fragments: Fragments, covered: torch.Tensor) -> torch.Tensor:
    """World unit normals (N, 3) at the covered flat pixel indices, interpolated and turned towards the camera."""
    _, h, w = fragments.face_id.shape
    f = fragments.face_id.reshape(-1)[covered]
    bary = fragments.bary.reshape(-1, 3)[covered, :, None]
    normal = F.normalize((mesh.corner_normals[f] * bary).sum(dim=1), dim=1)
    sign = _facing_sign(mesh, fragments.camera_centres)  # (B, F)
    return normal * sign.reshape(-1)[(covered // (h * w)) * mesh.faces.shape[0] + f, None]


def _sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear texture lookup (N, 3) with repeat wrapping; trimesh UVs have v = 0 at the image bottom."""
    uv = uv - torch.floor(uv)
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None]
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def _facing_sign(mesh: RenderMesh, camera_centres: torch.Tensor) -> torch.Tensor:
    """(B, F): +1 where a face's geometric normal points to the camera, -1 where the camera sees its back."""
    corners = mesh.vertices[mesh.faces]
    geometric = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)
    to_camera = camera_centres[:, None, :] - corners[None, :, 0]
    return torch.where((geometric[None] * to_camera).sum(dim=-1) >= 0, 1.0, -1.0)


def render_views(
    mesh,
    intrinsics,
    cam_to_world,
    width: int,
    height: int,
    lighting: Lighting = "lit",
    background=0.0,
    supersample: int = 2,
    device: str | torch.device = "cpu",
) -> Render:
    """Render B cameras at once: rgb (B, H, W, 3) composited on ``background``, alpha (B, H, W), depth (B, H, W).

    ``mesh`` is a trimesh Scene/Trimesh or a :class:`RenderMesh`; ``intrinsics`` (B, 3, 3) are for the output size.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    prepared = prepare_mesh(mesh, device)
    k = np.array(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    k[:, :2] *= supersample  # pixel coordinates scale with the resolution; centres stay at i + 0.5
    c2w = np.asarray(cam_to_world, dtype=np.float64).reshape(-1, 4, 4)
    fragments = rasterize(prepared, k, c2w, width * supersample, height * supersample)
    color, alpha = shade(prepared, fragments, lighting)
    if supersample > 1:
        pool = supersample

        def down(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) box filter
            return F.avg_pool2d(x.permute(0, 3, 1, 2), pool).permute(0, 2, 3, 1)

        color = down(color)  # colour is 0 where uncovered, so this is premultiplied
        depth_sum = down(fragments.depth[..., None])[..., 0]
        alpha = down(alpha[..., None])[..., 0]
        depth = torch.where(alpha > 0, depth_sum / alpha.clamp(min=1e-12), torch.zeros_like(alpha))
    else:
        depth = fragments.depth
    bg = torch.as_tensor(np.broadcast_to(np.asarray(background, np.float32), (3,)).copy(), device=prepared.device)
    rgb = color + (1 - alpha[..., None]) * bg
    return Render(rgb=rgb.clamp(0, 1).cpu().numpy(), alpha=alpha.cpu().numpy(), depth=depth.cpu().numpy())
