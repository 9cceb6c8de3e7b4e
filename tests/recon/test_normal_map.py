"""Normal map and albedo bakes, read back from the exported GLB the way a glTF shader reads them.

A coarse sphere baked from a fine mesh of a ribbed sphere must give back the ribs' normals when its file's NORMAL,
TANGENT and normalTexture are combined as the glTF spec says (bitangent = w · normal × tangent, +Y up the image); a
flat quad under a tilted plane pins down the sign of each channel; the closest points on the detail mesh are
trimesh's, and texels with no detail surface near them keep the coarse normal; the albedo bake divides out a known
light.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from recon.albedo import remove_shading
from recon.cameras import gltf_to_world, world_to_gltf
from recon.errors import InputError
from recon.export import export_mesh, place
from recon.normal_map import bake_normal_map, closest_barycentric, detail_normals, vertex_tangents
from recon.sdf_grid import Box, SdfGrid, shade
from recon.texture import rasterize_uv, unwrap

#: The fine surface: a sphere of radius 0.8 with ribs around the z axis, f = |p| - 0.8 - 0.03 sin(10 z).
RADIUS, AMPLITUDE, FREQUENCY = 0.8, 0.03, 10.0


def onto_ribs(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ribbed sphere's surface points nearest ``points`` (a few Newton steps onto f = 0) and its unit normals
    there."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(5):
        r = np.linalg.norm(p, axis=1, keepdims=True)
        f = r - RADIUS - AMPLITUDE * np.sin(FREQUENCY * p[:, 2:3])
        grad = p / r - np.array([0, 0, 1.0]) * AMPLITUDE * FREQUENCY * np.cos(FREQUENCY * p[:, 2:3])
        p = p - f * grad / (grad**2).sum(1, keepdims=True)
    return p, grad / np.linalg.norm(grad, axis=1, keepdims=True)


def ribbed_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals of the ribbed sphere at the surface points nearest ``points``."""
    return onto_ribs(points)[1]


def ribbed_mesh() -> trimesh.Trimesh:
    """The ribbed sphere as a fine mesh (20480 faces, about 20 edges per rib), the high-poly source of a bake."""
    sphere = trimesh.creation.icosphere(subdivisions=5)
    return trimesh.Trimesh(onto_ribs(sphere.vertices * RADIUS)[0], sphere.faces, process=False)


def grid_of(sdf, resolution: int = 96, light: torch.Tensor | None = None) -> SdfGrid:
    box = Box(torch.full((3,), -1.0), torch.full((3,), 1.0))
    points = box.grid_points((resolution,) * 3)
    return SdfGrid(sdf(points), torch.zeros(3, 8, 8, 8), box, light)


def textured(mesh: trimesh.Trimesh, size: int, uv: np.ndarray | None = None, colour=(200, 150, 100)):
    """``mesh`` UV-unwrapped (unless ``uv`` is given) with a plain base colour texture and a PBR material."""
    if uv is None:
        vmapping, faces, uv = unwrap(mesh, size, 2)
        mesh = trimesh.Trimesh(mesh.vertices[vmapping], faces, process=False)
    image = Image.fromarray(np.full((size, size, 3), colour, np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, visual=trimesh.visual.TextureVisuals(uv, material=material))


def read_glb(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON of a GLB and its first primitive's attributes as float arrays (parsed by hand: trimesh drops
    TANGENT)."""
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    tree = json.loads(data[20 : 20 + length])
    binary = data[20 + length + 8 :]
    attributes = {}
    for name, index in tree["meshes"][0]["primitives"][0]["attributes"].items():
        accessor = tree["accessors"][index]
        view = tree["bufferViews"][accessor["bufferView"]]
        width = {"VEC2": 2, "VEC3": 3, "VEC4": 4}[accessor["type"]]
        start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
        values = np.frombuffer(binary, np.float32, accessor["count"] * width, start)
        attributes[name] = values.reshape(-1, width).astype(np.float64)
    return tree, attributes


def shader_normals(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per covered texel of the file's normal map: the point (file frame), the normal a glTF shader computes from
    NORMAL, TANGENT and the texture, and the vertex normal alone (both unit, file frame)."""
    _, attributes = read_glb(path)
    loaded = trimesh.load(path, force="mesh", process=False)
    texture = np.asarray(loaded.visual.material.normalTexture.convert("RGB"), dtype=np.float64) / 255 * 2 - 1
    size = texture.shape[0]
    uv = attributes["TEXCOORD_0"] * [1, -1] + [0, 1]  # glTF v runs down the image; the rasteriser's runs up
    face_id, bary = rasterize_uv(
        torch.as_tensor(uv, dtype=torch.float32), torch.as_tensor(loaded.faces, dtype=torch.int64), size
    )
    covered = (face_id >= 0).numpy()
    corners = np.asarray(loaded.faces)[face_id.numpy()[covered]]
    weights = bary.numpy()[covered][..., None]

    def interpolate(values: np.ndarray) -> np.ndarray:
        return (values[corners] * weights).sum(1)

    normal = interpolate(attributes["NORMAL"])
    tangent = interpolate(attributes["TANGENT"][:, :3])
    w = np.sign(interpolate(attributes["TANGENT"][:, 3:]))
    bitangent = w * np.cross(normal, tangent)
    x, y, z = texture[covered].T
    mapped = tangent * x[:, None] + bitangent * y[:, None] + normal * z[:, None]
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    return interpolate(attributes["POSITION"]), unit(mapped), unit(normal)


def test_normal_map_read_as_gltf_gives_back_the_fine_surface(tmp_path):
    coarse = trimesh.creation.icosphere(subdivisions=2)  # 320 faces: far too coarse for the ribs
    coarse.vertices *= RADIUS
    mesh = textured(coarse, 256)
    baked = bake_normal_map(mesh, ribbed_mesh())
    assert baked.visual.material.normalTexture.size == (256, 256)
    assert mesh.visual.material.normalTexture is None  # the input untouched
    (path,) = export_mesh(baked, tmp_path / "ribbed.glb")
    points, mapped, vertex = shader_normals(path)
    placement = place(baked)
    world = gltf_to_world(points / placement.scale + placement.offset)
    truth = world_to_gltf(ribbed_normals(world))
    error = np.degrees(np.arccos(np.clip((mapped * truth).sum(1), -1, 1)))
    coarse_error = np.degrees(np.arccos(np.clip((vertex * truth).sum(1), -1, 1)))
    # measured: mean 0.20°, 99th percentile 0.42° (the coarse normals alone: mean 8.9°, 99th percentile 17.8°)
    assert error.mean() < 1 and np.percentile(error, 99) < 3, (error.mean(), np.percentile(error, 99))
    assert coarse_error.mean() > 5


@pytest.mark.parametrize("tilt", [(-0.2, 0.0), (0.0, -0.2)])
def test_channels_follow_the_gltf_convention_red_along_u_green_up_the_image(tilt):
    # a unit quad facing +z, u along +x and v along +y (up the image), under the plane z = a x + b y
    vertices = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = vertices[:, :2] + 0.5
    mesh = textured(trimesh.Trimesh(vertices, faces, process=False), 32, uv=uv)
    a, b = tilt
    corners = np.array([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]])
    corners[:, 2] = a * corners[:, 0] + b * corners[:, 1]
    baked = bake_normal_map(mesh, trimesh.Trimesh(corners, faces, process=False))
    texture = np.asarray(baked.visual.material.normalTexture, dtype=np.float64)[4:-4, 4:-4] / 255 * 2 - 1
    expected = np.array([-a, -b, 1.0]) / np.linalg.norm([-a, -b, 1.0])  # tilted towards -x (red) or -y (green)
    np.testing.assert_allclose(texture.reshape(-1, 3).mean(0), expected, atol=0.01)
    tangents = vertex_tangents(mesh, np.tile([0.0, 0, 1], (4, 1)))
    np.testing.assert_allclose(tangents, np.tile([1.0, 0, 0, 1], (4, 1)), atol=1e-9)  # +u, right-handed


def test_closest_points_are_trimeshs_degenerate_triangles_included():
    rng = np.random.default_rng(0)
    triangles = rng.normal(size=(3000, 3, 3))
    triangles[:100, 2] = triangles[:100, 0]  # two corners at one point: a segment
    triangles[100:200] = triangles[100:200, :1]  # all three: a point
    triangles[200:300, 2] = 2 * triangles[200:300, 1] - triangles[200:300, 0]  # collinear corners
    points = rng.normal(size=(3000, 3)) * 2
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    bary = closest_barycentric(as_tensor(points), *(as_tensor(triangles[:, k]) for k in range(3)))
    closest = (as_tensor(triangles) * bary[..., None]).sum(1).numpy()
    np.testing.assert_allclose(closest, trimesh.triangles.closest_point(triangles, points), atol=1e-9)
    assert (bary >= 0).all() and torch.allclose(bary.sum(-1), torch.ones(3000, dtype=torch.float64))


def test_texels_far_from_the_detail_or_facing_away_keep_the_coarse_normal():
    detail = trimesh.creation.icosphere(subdivisions=3)  # the unit sphere, outward
    points = torch.tensor([[0, 0, 1.05], [0, 0, 1.5], [0, 0, 0.95]])
    coarse = torch.tensor([[0.6, 0, 0.8], [0.6, 0, 0.8], [0, 0, -1.0]])
    normals = detail_normals(detail, points, coarse, reach=0.2)
    # near and facing alike: the sphere's own (vertex normals interpolated at its closest point, the +z vertex here)
    np.testing.assert_allclose(normals[0].numpy(), [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(normals[1:].numpy(), coarse[1:].numpy(), atol=1e-6)  # too far; facing away


def test_albedo_divides_out_the_learnt_light():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    sphere.vertices *= RADIUS
    light = torch.tensor([0.3, -0.2, 1.0, 0.0])  # ambient share sigmoid(0) = 1/2
    grid = grid_of(lambda p: p.norm(dim=-1) - RADIUS, 64, light)
    mesh = textured(sphere, 128)
    # the views' colour: albedo (200, 150, 100) lit by the fit's light at each texel's normal
    albedo = np.array([200, 150, 100]) / 255
    points = np.asarray(mesh.vertices)
    lit = albedo * shade(torch.as_tensor(points / RADIUS, dtype=torch.float32), light).numpy()[:, None]
    lit_mesh = textured(mesh, 128, uv=mesh.visual.uv)
    image = np.zeros((128, 128, 3))
    face_id, bary = rasterize_uv(torch.as_tensor(mesh.visual.uv, dtype=torch.float32), torch.as_tensor(mesh.faces), 128)
    covered = (face_id >= 0).numpy()
    corners = np.asarray(mesh.faces)[face_id.numpy()[covered]]
    image[covered] = (lit[corners] * bary.numpy()[covered][..., None]).sum(1)
    lit_mesh.visual.material.baseColorTexture = Image.fromarray((image * 255 + 0.5).astype(np.uint8))
    out = remove_shading(lit_mesh, grid)
    recovered = np.asarray(out.visual.material.baseColorTexture, dtype=np.float64)[covered] / 255
    assert np.abs(recovered - albedo).mean() < 0.02, np.abs(recovered - albedo).mean()
    assert np.abs(image[covered] - albedo).mean() > 0.1  # the shading that was removed
    with pytest.raises(InputError, match="learnt light"):
        remove_shading(lit_mesh, grid_of(lambda p: p.norm(dim=-1) - RADIUS, 16))
