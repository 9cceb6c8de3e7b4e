"""Mesh export: GLB (PBR base colour, normal map), OBJ+MTL+PNG, PLY with vertex colours; glTF axes, real size.

Meshes live in the z-up world of :mod:`recon.cameras` until this boundary, where they turn into glTF axes with
:func:`recon.cameras.world_to_gltf` (+Y up, the input photo's side facing +Z) for every format, so a GLB, an OBJ and a
PLY of the same object load the same way round in any viewer. They are placed as a game engine wants a prop: the
origin at the centre of the object's base (it stands on y = 0) and scaled to a real height in metres (the fit's units
are arbitrary: the views fix the shape, not the size). Levels of detail share the finest level's placement, so that
switching levels never moves the object.

Textures are square powers of two (engines mip-map and compress those; another size is resized up to one). The base
colour texture holds sRGB values, as glTF defines ``baseColorTexture``; a normal map is linear, in the tangent frame
of the ``TANGENT`` attribute written beside it (:mod:`recon.normal_map`). Vertex normals are written too, smooth
across UV seams. PLY has no textures, so it carries the texture sampled at each vertex. Files are written under
temporary names and renamed only when complete, so a failure never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from recon.cameras import WORLD_TO_GLTF, world_to_gltf
from recon.config import ExportConfig
from recon.errors import InputError
from recon.normal_map import vertex_normals, vertex_tangents
from recon.paths import export_target

#: zlib level of the PNG textures (GLB, OBJ): 1 encodes a 1024² baked texture in about 40% of the time of Pillow's
#: default 6 (0.07 vs 0.15 CPU s) for a ~20% larger file; textures are recompressed by any game asset pipeline.
PNG_COMPRESS_LEVEL = 1

#: The PBR material's texture slots that export writes (glTF names).
TEXTURE_SLOTS = ("baseColorTexture", "normalTexture")

#: glTF bufferView targets: vertex attributes and triangle indices.
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class Placement:
    """Where a world z-up mesh goes in its file: ``file = (world_to_gltf(world) - offset) · scale``."""

    offset: np.ndarray
    """The centre of the object's base in glTF axes, fit units (3,)."""
    scale: float
    """Metres per fit unit."""
    height: float
    """The object's height in metres."""

    def matrix(self) -> np.ndarray:
        """The 4x4 transform from the fit's world (z-up, the cameras' frame of ``transforms.json``) to the file."""
        transform = np.eye(4)
        transform[:3, :3] = WORLD_TO_GLTF * self.scale
        transform[:3, 3] = -self.offset * self.scale
        return transform


def place(mesh: trimesh.Trimesh, height: float = 1.0) -> Placement:
    """The placement that puts ``mesh``'s base centre at the origin and scales it to ``height`` metres."""
    if not height > 0:
        raise InputError(f"export.height must be a positive number of metres, not {height}; e.g. --height 1.5.")
    points = world_to_gltf(mesh.vertices)
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float(hi[1] - lo[1])
    if extent <= 0:
        raise InputError("The mesh is flat along its up axis, so it has no height to scale; check the fitted mesh.")
    offset = np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    return Placement(offset=offset, scale=height / extent, height=height)


def export_mesh(
    mesh: trimesh.Trimesh, path: str | Path, format: str | None = None, placement: Placement | None = None
) -> list[Path]:
    """Write a world z-up (textured) mesh to ``path`` in glTF axes, placed (default: standing on y = 0, 1 m high);
    returns every file written, the mesh file first.

    ``format`` defaults to the path's extension. OBJ also writes ``<stem>.mtl`` and ``<stem>.png`` beside it.
    """
    path, fmt = export_target(path, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    placement = placement or place(mesh)
    out = gltf_axes(mesh, placement)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp:
        staged = Path(tmp) / path.name
        if fmt == "glb":
            _write_glb(out, staged, placement)
        elif fmt == "obj":
            _write_obj(out, staged)
        else:
            ply = trimesh.Trimesh(out.vertices, out.faces, vertex_colors=vertex_colours(out), process=False)
            ply.export(staged, file_type="ply")
        written = []
        for file in sorted(Path(tmp).iterdir(), key=lambda f: (f.name != path.name, f.name)):
            target = path.parent / file.name
            os.replace(file, target)
            written.append(target)
    return written


def export_levels(
    meshes: list[trimesh.Trimesh], path: str | Path, format: str | None = None, height: float = 1.0
) -> list[Path]:
    """Write levels of detail (finest first): one mesh to ``path`` itself, several to ``<stem>_lod<i>.<ext>``, all
    placed by the finest level; returns every file written, each level's mesh file first."""
    path, fmt = export_target(path, format)
    placement = place(meshes[0], height)
    if len(meshes) == 1:
        return export_mesh(meshes[0], path, fmt, placement)
    written = []
    for level, mesh in enumerate(meshes):
        written += export_mesh(mesh, path.with_name(f"{path.stem}_lod{level}{path.suffix}"), fmt, placement)
    return written


def export_record(meshes: list[trimesh.Trimesh], config: ExportConfig) -> dict[str, Any]:
    """What ``run.json`` says of the exported asset: placement, units, colour space and per level its faces, texture
    side and texel density (texels per metre along the surface)."""
    placement = place(meshes[0], config.height)
    levels = []
    for mesh in meshes:
        level: dict[str, Any] = {"faces": len(mesh.faces)}
        image = _texture(mesh, "baseColorTexture")
        if image is not None:
            level["texture_size"] = power_of_two_side(image)
            level["texels_per_metre"] = round(texel_density(mesh, level["texture_size"]) / placement.scale, 1)
        levels.append(level)
    return {
        "height_m": placement.height,
        "metres_per_fit_unit": placement.scale,
        "origin": "centre of the base (stands on y = 0)",
        "axes": "+Y up, front +Z (glTF), metres",
        "world_to_file": placement.matrix().tolist(),
        "base_colour": f"{config.colour}, sRGB",
        "normal_map": config.normal_map,
        "levels": levels,
    }


def world_to_file(path: str | Path) -> np.ndarray:
    """The 4x4 transform from the fit's world frame to a GLB written by :func:`export_mesh` (its placement), read
    from the file."""
    data = Path(path).read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    return np.array(json.loads(data[20 : 20 + length])["asset"]["extras"]["world_to_file"])


def texel_density(mesh: trimesh.Trimesh, size: int) -> float:
    """Texels per unit length of ``mesh``'s surface on a ``size``² texture: √(UV area in texels² / surface area)."""
    uv = np.asarray(mesh.visual.uv, dtype=np.float64)[np.asarray(mesh.faces)]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    uv_area = 0.5 * np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).sum() * size**2
    return float(np.sqrt(uv_area / max(mesh.area, 1e-30)))


def gltf_axes(mesh: trimesh.Trimesh, placement: Placement) -> trimesh.Trimesh:
    """A copy of a world z-up mesh turned into glTF axes (a proper rotation: winding and normals stay valid) and
    placed, with smooth vertex normals (and tangents, ``vertex_attributes["tangent"]``, with a normal map) and its
    textures square powers of two set to encode at :data:`PNG_COMPRESS_LEVEL`."""
    out = mesh.copy()
    out.vertices = (world_to_gltf(mesh.vertices) - placement.offset) * placement.scale
    normals = vertex_normals(mesh)
    out.vertex_normals = world_to_gltf(normals)
    material = getattr(out.visual, "material", None)
    if material is None:
        return out
    out.visual.material = material = material.copy()
    for slot in TEXTURE_SLOTS:
        image = getattr(material, slot, None)
        if image is None:
            continue
        image = power_of_two(image)
        # trimesh saves textures with no options; Pillow merges an image's own encoderinfo into every save.
        image.encoderinfo = {**getattr(image, "encoderinfo", {}), "compress_level": PNG_COMPRESS_LEVEL}
        setattr(material, slot, image)
    if getattr(material, "normalTexture", None) is not None:
        tangents = vertex_tangents(mesh, normals)
        tangents[:, :3] = tangents[:, :3] @ WORLD_TO_GLTF.T  # a rotation keeps the handedness w
        out.vertex_attributes["tangent"] = tangents.astype(np.float32)
    return out


def power_of_two_side(image: Image.Image) -> int:
    """The side of the square power-of-two texture :func:`power_of_two` makes of ``image``."""
    return 1 << (max(image.size) - 1).bit_length()


def power_of_two(image: Image.Image) -> Image.Image:
    """``image`` as a square power-of-two texture (a copy; resized up to the next power of two when it is not one)."""
    side = power_of_two_side(image)
    if image.size == (side, side):
        return image.copy()
    return image.resize((side, side), Image.Resampling.LANCZOS)


def vertex_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """RGBA uint8 (V, 4): the base-colour texture sampled at each vertex's UV, or the mesh's own colours."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
        image = _texture(mesh, "baseColorTexture") or getattr(visual.material, "image", None)
        if image is not None:
            texture = np.asarray(image.convert("RGB"))
            h, w = texture.shape[:2]
            uv = np.asarray(visual.uv)
            x = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
            y = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
            rgb = texture[y, x]
            return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    return np.asarray(mesh.visual.to_color().vertex_colors, dtype=np.uint8)


def _texture(mesh: trimesh.Trimesh, slot: str) -> Image.Image | None:
    visual = mesh.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals):
        return None
    return getattr(visual.material, slot, None)


def _write_glb(mesh: trimesh.Trimesh, path: Path, placement: Placement) -> None:
    """GLB with normals, and tangents under their glTF name (trimesh writes custom attributes with a leading
    underscore), every bufferView marked with its target (the validator hints at it otherwise), and the placement's
    matrix in ``asset.extras.world_to_file`` (:func:`world_to_file`)."""
    from trimesh.exchange.gltf import export_glb

    def amend_tree(tree: dict[str, Any]) -> None:
        tree["asset"]["extras"] = {"world_to_file": placement.matrix().tolist()}
        views = tree.get("bufferViews", [])
        for m in tree.get("meshes", []):
            for primitive in m["primitives"]:
                attributes = primitive["attributes"]
                if "_tangent" in attributes:
                    attributes["TANGENT"] = attributes.pop("_tangent")
                for accessor in attributes.values():
                    views[tree["accessors"][accessor]["bufferView"]]["target"] = ARRAY_BUFFER
                if "indices" in primitive:
                    views[tree["accessors"][primitive["indices"]]["bufferView"]]["target"] = ELEMENT_ARRAY_BUFFER

    path.write_bytes(export_glb(trimesh.Scene(mesh), include_normals=True, tree_postprocessor=amend_tree))


def _write_obj(mesh: trimesh.Trimesh, path: Path) -> None:
    """OBJ + ``<stem>.mtl`` + ``<stem>.png`` (trimesh names them after the material; renamed after the stem), with
    the smooth vertex normals; a normal map goes to ``<stem>_normal.png``, named in the MTL by ``map_Bump -bm 1``,
    which Blender's OBJ importer turns into a tangent-space Normal Map node of strength 1 (without ``-bm`` it reads
    strength 0), though it loads the image as sRGB where a normal map wants Non-Color (Blender 3.4.1; an
    MTL cannot say), and which trimesh keeps as the material's ``map_bump`` entry. OBJ has no tangents: an
    importer derives its own from the UVs and normals (Blender: MikkTSpace, angle-weighted where the bake's are
    area-weighted, so the two frames differ slightly where a vertex's faces disagree)."""
    from trimesh.exchange.obj import export_obj

    visual = mesh.visual
    material = visual.material if isinstance(visual, trimesh.visual.TextureVisuals) else None
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        path.write_text(export_obj(mesh, include_texture=False))
        return
    # Kd white: most OBJ viewers multiply map_Kd by Kd, and trimesh's default Kd is 0.4 gray.
    white = (255, 255, 255, 255)
    simple_material = trimesh.visual.material.SimpleMaterial(
        image=image, diffuse=white, ambient=white, specular=(0, 0, 0, 255)
    )
    simple = trimesh.Trimesh(
        mesh.vertices,
        mesh.faces,
        vertex_normals=mesh.vertex_normals,
        visual=trimesh.visual.TextureVisuals(uv=visual.uv, material=simple_material),
        process=False,
    )
    text, files = export_obj(
        simple, include_normals=True, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl"
    )
    texture_name = f"{path.stem}.png"
    normal_map = getattr(material, "normalTexture", None)
    for name, data in files.items():
        if name.endswith(".mtl"):
            mtl = data.decode()
            for other in files:
                if not other.endswith(".mtl"):
                    mtl = mtl.replace(other, texture_name)
            if normal_map is not None:  # the file's one material is the last one: its lines run to the end
                normal_name = f"{path.stem}_normal.png"
                normal_map.save(path.parent / normal_name, compress_level=PNG_COMPRESS_LEVEL)
                mtl = mtl.rstrip("\n") + f"\nmap_Bump -bm 1 {normal_name}\n"
            (path.parent / name).write_text(mtl)
        else:
            (path.parent / texture_name).write_bytes(data)
    path.write_text(text)
