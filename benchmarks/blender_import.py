"""Open exported GLBs (and OBJs) in Blender, headless, and print what an artist would see: a real importer's view.

Run inside Blender (Debian: ``apt-get install -y blender``), one JSON line per file::

    blender -b --factory-startup -P benchmarks/blender_import.py -- out/duck/mesh.glb out/duck/mesh_lod1.glb

Per file: the imported objects' world-space dimensions in metres (Blender is +Z up: its glTF importer turns glTF's
+Y up into +Z, so the height is the z dimension), the lowest and highest z (0 and the height when the object stands on
the ground), the face count, and each material with the images feeding its Principled BSDF's Base Color and Normal
(through a Normal Map node in tangent space, with its strength). An OBJ goes through Blender's OBJ importer
(``wm.obj_import``, whose defaults turn OBJ's +Y up into +Z too), which reads the MTL's ``map_Bump`` as that Normal
Map node. Not a test: Blender is too heavy for CI.
"""

from __future__ import annotations

import json
import sys

import bpy  # Blender's own Python module: this script runs only inside Blender
import numpy
from mathutils import Vector

# Debian 12's Blender 3.4.1 glTF importer still uses numpy's `np.bool` alias, which Debian's numpy 1.24 removed
# (the import fails with "module 'numpy' has no attribute 'bool'"); the alias meant the builtin.
if "bool" not in vars(numpy):
    numpy.bool = bool


def material_report(material) -> dict:
    """The images behind a material's Base Color and Normal inputs."""
    report = {"name": material.name}
    if not material.use_nodes:
        return report
    bsdf = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return report
    for socket in ("Base Color", "Normal"):
        links = bsdf.inputs[socket].links
        if not links:
            continue
        node = links[0].from_node
        if node.type == "NORMAL_MAP":
            report["normal_map_space"] = node.space
            report["normal_map_strength"] = round(node.inputs["Strength"].default_value, 3)
            node = node.inputs["Color"].links[0].from_node if node.inputs["Color"].links else node
        if node.type == "TEX_IMAGE" and node.image is not None:
            image = node.image
            report[socket] = {
                "image": image.name,
                "size": list(image.size),
                "colorspace": image.colorspace_settings.name,
            }
    return report


def inspect(path: str) -> dict:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if path.lower().endswith(".obj"):
        bpy.ops.wm.obj_import(filepath=path)
    else:
        bpy.ops.import_scene.gltf(filepath=path)
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    corners = [o.matrix_world @ Vector(c) for o in meshes for c in o.bound_box]
    lo = [min(c[i] for c in corners) for i in range(3)]
    hi = [max(c[i] for c in corners) for i in range(3)]
    materials = {m.name: m for o in meshes for m in o.data.materials if m is not None}
    return {
        "file": path,
        "blender": bpy.app.version_string,
        "objects": len(meshes),
        "dimensions_m": [round(h - lo_, 4) for lo_, h in zip(lo, hi, strict=True)],
        "min_z": round(lo[2], 4),
        "max_z": round(hi[2], 4),
        "up_axis": "Z",  # Blender's world is +Z up; the importer converts glTF +Y up to it
        "faces": sum(len(o.data.polygons) for o in meshes),
        "uv_layers": [o.data.uv_layers.active.name if o.data.uv_layers else None for o in meshes],
        "materials": [material_report(m) for m in materials.values()],
    }


if __name__ == "__main__":
    files = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    for file in files:
        print(json.dumps(inspect(file)), flush=True)
