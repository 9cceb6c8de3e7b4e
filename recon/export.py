"""Mesh export: GLB (PBR base colour), OBJ+MTL+PNG, PLY with vertex colours; glTF axes (+Y up).

Meshes live in the z-up world of :mod:`recon.cameras` until this boundary, where they turn into glTF axes with
:func:`recon.cameras.world_to_gltf` (+Y up, the input photo's side facing +Z) for every format, so a GLB, an OBJ and a
PLY of the same object load the same way round in any viewer. PLY has no textures, so it carries the texture sampled
at each vertex. Files are written under temporary names and renamed only when complete, so a failure never leaves a
file that looks finished.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from recon.cameras import world_to_gltf
from recon.config import FORMATS
from recon.errors import InputError

#: zlib level of the PNG texture (GLB, OBJ): 1 encodes a 1024² baked texture in about 40% of the time of Pillow's
#: default 6 (0.07 vs 0.15 CPU s) for a ~20% larger file; textures are recompressed by any game asset pipeline.
PNG_COMPRESS_LEVEL = 1


def export_mesh(mesh: trimesh.Trimesh, path: str | Path, format: str | None = None) -> list[Path]:
    """Write a world z-up (textured) mesh to ``path`` in glTF axes; returns every file written.

    ``format`` defaults to the path's extension. OBJ also writes ``<stem>.mtl`` and ``<stem>.png`` beside it.
    """
    path, fmt = export_target(path, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = gltf_axes(mesh)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp:
        staged = Path(tmp) / path.name
        if fmt == "glb":
            out.export(staged, file_type="glb")
        elif fmt == "obj":
            _write_obj(out, staged)
        else:
            ply = trimesh.Trimesh(out.vertices, out.faces, vertex_colors=vertex_colours(out), process=False)
            ply.export(staged, file_type="ply")
        written = []
        for file in sorted(Path(tmp).iterdir()):
            target = path.parent / file.name
            os.replace(file, target)
            written.append(target)
    return written


def export_target(path: str | Path, format: str | None = None) -> tuple[Path, str]:
    """The file that :func:`export_mesh` will write and its format, checked before any work is spent on the mesh: a
    known format, and a folder that exists and is writable or can be created (:func:`export_mesh` creates it)."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise InputError(f"Cannot export {path.name}: unknown mesh format {fmt!r}; use .glb, .obj or .ply.")
    if path.suffix.lower() != f".{fmt}":
        path = path.with_suffix(f".{fmt}")
    if path.is_dir():
        raise InputError(f"Cannot export to {path}: it is a folder; name a mesh file such as {path / 'mesh.glb'}.")
    check_writable(path.parent, "export")
    return path, fmt


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder that cannot be created or written (``what`` names it in the sentence), leaving nothing
    behind: the nearest existing ancestor must be a folder this process can create files in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"The {what} location {folder} is inside a file ({existing}); choose another folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(
            f"Cannot write the {what} to {folder}: creating a file in {existing} fails ({exc.strerror}); "
            "choose a writable location."
        ) from None


def gltf_axes(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of a world z-up mesh turned into glTF axes (a proper rotation: winding and normals stay valid), its
    texture set to encode at :data:`PNG_COMPRESS_LEVEL`."""
    out = mesh.copy()
    out.vertices = world_to_gltf(mesh.vertices)
    image = getattr(getattr(out.visual, "material", None), "baseColorTexture", None)
    if image is not None:
        # trimesh saves the texture with no options; Pillow merges an image's own encoderinfo into every save.
        image.encoderinfo = {**getattr(image, "encoderinfo", {}), "compress_level": PNG_COMPRESS_LEVEL}
    return out


def vertex_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """RGBA uint8 (V, 4): the base-colour texture sampled at each vertex's UV, or the mesh's own colours."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
        image = getattr(visual.material, "baseColorTexture", None) or getattr(visual.material, "image", None)
        if image is not None:
            texture = np.asarray(image.convert("RGB"))
            h, w = texture.shape[:2]
            uv = np.asarray(visual.uv)
            x = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
            y = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
            rgb = texture[y, x]
            return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    return np.asarray(mesh.visual.to_color().vertex_colors, dtype=np.uint8)


def _write_obj(mesh: trimesh.Trimesh, path: Path) -> None:
    """OBJ + ``<stem>.mtl`` + ``<stem>.png`` (trimesh names them after the material; renamed after the stem)."""
    from trimesh.exchange.obj import export_obj

    visual = mesh.visual
    image = (
        getattr(visual.material, "baseColorTexture", None)
        if isinstance(visual, trimesh.visual.TextureVisuals)
        else None
    )
    if image is None:
        path.write_text(export_obj(mesh, include_texture=False))
        return
    # Kd white: most OBJ viewers multiply map_Kd by Kd, and trimesh's default Kd is 0.4 gray.
    white = (255, 255, 255, 255)
    material = trimesh.visual.material.SimpleMaterial(
        image=image, diffuse=white, ambient=white, specular=(0, 0, 0, 255)
    )
    simple = trimesh.Trimesh(
        mesh.vertices, mesh.faces, visual=trimesh.visual.TextureVisuals(uv=visual.uv, material=material), process=False
    )
    text, files = export_obj(simple, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl")
    texture_name = f"{path.stem}.png"
    for name, data in files.items():
        if name.endswith(".mtl"):
            mtl = data.decode()
            for other in files:
                if not other.endswith(".mtl"):
                    mtl = mtl.replace(other, texture_name)
            (path.parent / name).write_text(mtl)
        else:
            (path.parent / texture_name).write_bytes(data)
    path.write_text(text)
