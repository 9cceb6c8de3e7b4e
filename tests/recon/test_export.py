"""Export: GLB, OBJ+MTL+PNG and PLY reload in trimesh and PyVista with their texture/colours, in glTF axes, standing
on y = 0 at their height; every GLB passes the Khronos glTF-Validator with no error and no warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from recon.cameras import world_to_gltf
from recon.errors import InputError
from recon.export import (
    export_levels,
    export_mesh,
    place,
    power_of_two,
    texel_density,
    world_to_file,
)
from recon.normal_map import vertex_normals
from recon.paths import export_target
from recon.texture import unwrap


@pytest.fixture(scope="module")
def textured() -> trimesh.Trimesh:
    """A UV-textured world z-up mesh whose +X side is marked: a sphere with a bump on +X, texture red for u < 0.5."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices.copy()
    vertices[:, 0] += 0.5 * np.clip(vertices[:, 0], 0, None) ** 8  # a nose on +X
    mesh = trimesh.Trimesh(vertices, sphere.faces)
    vmapping, faces, uv = unwrap(mesh, 256, 2)
    texture = np.zeros((256, 256, 3), np.uint8)
    texture[:, :128] = (220, 30, 30)
    texture[:, 128:] = (30, 30, 220)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(mesh.vertices[vmapping], faces, visual=visual, process=False)


def test_glb_round_trip_keeps_uvs_texture_and_turns_world_x_to_gltf_z(textured, tmp_path):
    written = export_mesh(textured, tmp_path / "mesh.glb")
    assert written == [tmp_path / "mesh.glb"]
    loaded = trimesh.load(written[0], force="mesh", process=False)
    assert len(loaded.vertices) == len(textured.vertices)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    np.testing.assert_allclose(loaded.visual.uv, textured.visual.uv, atol=1e-6)
    assert loaded.visual.material.baseColorTexture.size == (256, 256)
    placement = place(textured)
    expected = (world_to_gltf(textured.vertices) - placement.offset) * placement.scale
    np.testing.assert_allclose(loaded.vertices, expected, atol=1e-5)
    recorded = trimesh.transform_points(textured.vertices, world_to_file(written[0]))  # the file says where it put it
    np.testing.assert_allclose(recorded, expected, atol=1e-6)
    nose = np.argmax(textured.vertices[:, 0])  # world +X ...
    assert np.argmax(loaded.vertices[:, 2]) == nose  # ... is glTF +Z (the front)
    top = np.argmax(textured.vertices[:, 2])  # world +Z (up) ...
    assert loaded.vertices[top, 1] == pytest.approx(loaded.vertices[:, 1].max())  # ... is glTF +Y
    assert loaded.is_winding_consistent and loaded.volume > 0  # a rotation keeps outward winding


def test_obj_writes_mtl_and_png_and_reloads_textured(textured, tmp_path):
    written = export_mesh(textured, tmp_path / "mesh.obj")
    assert sorted(p.name for p in written) == ["mesh.mtl", "mesh.obj", "mesh.png"]
    mtl = (tmp_path / "mesh.mtl").read_text()
    assert "map_Kd mesh.png" in mtl and "Kd 1.0" in mtl
    loaded = trimesh.load(tmp_path / "mesh.obj", force="mesh", process=False)
    assert loaded.visual.uv is not None and len(loaded.visual.uv) == len(loaded.vertices)
    assert np.asarray(loaded.visual.material.image).shape[:2] == (256, 256)
    placement = place(textured)
    front = (world_to_gltf(textured.vertices)[:, 2].max() - placement.offset[2]) * placement.scale
    assert loaded.bounds[1, 2] == pytest.approx(front, abs=1e-5)


def test_obj_names_its_normal_map_in_the_mtl_with_the_smooth_normals(textured, tmp_path):
    from recon.normal_map import bake_normal_map

    baked = bake_normal_map(textured, trimesh.creation.icosphere(subdivisions=5))
    written = export_mesh(baked, tmp_path / "mesh.obj")
    assert sorted(p.name for p in written) == ["mesh.mtl", "mesh.obj", "mesh.png", "mesh_normal.png"]
    assert "map_Bump -bm 1 mesh_normal.png" in (tmp_path / "mesh.mtl").read_text().splitlines()
    loaded = trimesh.load(tmp_path / "mesh.obj", force="mesh", process=False)
    assert loaded.visual.material.kwargs["map_bump"] == ["-bm", "1", "mesh_normal.png"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "mesh_normal.png")), np.asarray(baked.visual.material.normalTexture)
    )
    # the normals the map was baked against (smooth across UV seams, in glTF axes), not ones an importer guesses
    lines = (tmp_path / "mesh.obj").read_text().splitlines()
    normals = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("vn ")])
    np.testing.assert_allclose(normals, world_to_gltf(vertex_normals(textured)), atol=1e-6)
    pv = pytest.importorskip("pyvista")
    plotter = pv.Plotter(off_screen=True)
    plotter.import_obj(str(tmp_path / "mesh.obj"), str(tmp_path / "mesh.mtl"))
    assert plotter.renderer.actors
    plotter.close()


def test_ply_carries_the_texture_as_vertex_colours(textured, tmp_path):
    (path,) = export_mesh(textured, tmp_path / "mesh.ply")
    loaded = trimesh.load(path, process=False)
    colours = np.asarray(loaded.visual.vertex_colors)[:, :3].astype(int)
    red = textured.visual.uv[:, 0] < 0.45
    blue = textured.visual.uv[:, 0] > 0.55
    assert (colours[red, 0] > 150).all() and (colours[red, 2] < 80).all()
    assert (colours[blue, 2] > 150).all() and (colours[blue, 0] < 80).all()


def test_every_format_reloads_in_pyvista_with_its_texture(textured, tmp_path):
    pv = pytest.importorskip("pyvista")
    export_mesh(textured, tmp_path / "mesh.glb")
    export_mesh(textured, tmp_path / "mesh.obj")
    export_mesh(textured, tmp_path / "mesh.ply")
    block = pv.read(tmp_path / "mesh.glb")
    while isinstance(block, pv.MultiBlock):
        block = block[0]
    assert block.n_points == len(textured.vertices) and "TEXCOORD_0" in block.array_names
    plotter = pv.Plotter(off_screen=True)
    plotter.import_gltf(str(tmp_path / "mesh.glb"))
    actors = list(plotter.renderer.actors.values())
    assert actors and actors[0].GetProperty().GetTexture("albedoTex") is not None
    plotter.close()
    obj = pv.read(tmp_path / "mesh.obj")
    assert obj.active_texture_coordinates is not None and obj.n_points == len(textured.vertices)
    assert pv.read_texture(tmp_path / "mesh.png").dimensions == (256, 256)
    ply = pv.read(tmp_path / "mesh.ply")
    assert "RGBA" in ply.array_names or "RGB" in ply.array_names


def test_bad_targets_are_refused_before_writing(textured, tmp_path):
    with pytest.raises(InputError, match="unknown mesh format"):
        export_mesh(textured, tmp_path / "mesh.fbx")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="inside a file"):
        export_target(tmp_path / "file" / "missing" / "mesh.glb")
    with pytest.raises(InputError, match=r"Cannot write the export to /proc/img2mesh: .*choose a writable location"):
        export_target("/proc/img2mesh/mesh.glb")
    (tmp_path / "folder.glb").mkdir()
    with pytest.raises(InputError, match="it is a folder"):
        export_target(tmp_path / "folder.glb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.glb"]


def test_missing_folders_are_created_like_an_output_folder(textured, tmp_path):
    assert export_target(tmp_path / "a" / "b" / "mesh.glb") == (tmp_path / "a" / "b" / "mesh.glb", "glb")
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert export_mesh(textured, tmp_path / "a" / "b" / "mesh.glb") == [tmp_path / "a" / "b" / "mesh.glb"]


def test_textures_are_written_with_fast_png_compression(textured, tmp_path):
    glb = export_mesh(textured, tmp_path / "mesh.glb")[0].read_bytes()
    obj_png = export_mesh(textured, tmp_path / "mesh.obj")
    for data in (glb, next(p for p in obj_png if p.suffix == ".png").read_bytes()):
        start = data.index(b"IDAT") + 4  # the zlib stream of the first image data chunk
        cmf, flg = data[start], data[start + 1]
        assert cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0  # a zlib header
        assert flg >> 6 == 0  # FLEVEL 0: zlib levels 0-1 (Pillow's default 6 writes 2)
    assert not hasattr(textured.visual.material.baseColorTexture, "encoderinfo")  # the caller's image untouched


def test_glbs_pass_the_khronos_validator_with_normals_and_tangents(textured, tmp_path, gltf_validator):
    from recon.normal_map import bake_normal_map

    plain = export_mesh(textured, tmp_path / "plain.glb")[0]
    detail = trimesh.creation.icosphere(subdivisions=5)  # the unit sphere, finer than the textured one
    mapped = export_mesh(bake_normal_map(textured, detail), tmp_path / "mapped.glb")[0]
    for report in gltf_validator(plain, mapped):
        issues = report["issues"]
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
    assert report["info"]["hasTextures"] and report["info"]["materialCount"] == 1
    attributes = json.loads(mapped.read_bytes()[20 : 20 + int.from_bytes(mapped.read_bytes()[12:16], "little")])
    primitive = attributes["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "TEXCOORD_0", "TANGENT"} <= set(primitive["attributes"])
    assert "normalTexture" in attributes["materials"][0]


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_every_format_stands_on_the_ground_at_its_height(textured, tmp_path, suffix):
    export_mesh(textured, tmp_path / f"mesh{suffix}", placement=place(textured, 1.5))
    loaded = trimesh.load(tmp_path / f"mesh{suffix}", force="mesh", process=False)
    assert loaded.bounds[0, 1] == pytest.approx(0, abs=1e-6) and loaded.bounds[1, 1] == pytest.approx(1.5, abs=1e-6)
    centre = loaded.bounds.mean(0)
    assert centre[0] == pytest.approx(0, abs=1e-6) and centre[2] == pytest.approx(0, abs=1e-6)
    with pytest.raises(InputError, match="positive number of metres"):
        place(textured, 0.0)


def test_levels_share_the_finest_levels_placement(textured, tmp_path):
    small = textured.copy()
    small.vertices = small.vertices * 0.5  # a coarser level that came out smaller must not be stretched to fit
    written = export_levels([textured, small], tmp_path / "mesh.glb", height=2.0)
    assert [p.name for p in written] == ["mesh_lod0.glb", "mesh_lod1.glb"]
    lod0, lod1 = (trimesh.load(p, force="mesh") for p in written)
    assert lod0.bounds[1, 1] == pytest.approx(2.0, abs=1e-6) and lod1.extents[1] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(world_to_file(written[0]), world_to_file(written[1]))


def test_textures_become_square_powers_of_two_and_density_is_measured(textured, tmp_path):
    odd = textured.copy()
    odd.visual.material = textured.visual.material.copy()
    odd.visual.material.baseColorTexture = textured.visual.material.baseColorTexture.resize((300, 300))
    loaded = trimesh.load(export_mesh(odd, tmp_path / "mesh.glb")[0], force="mesh")
    assert loaded.visual.material.baseColorTexture.size == (512, 512)
    assert power_of_two(Image.new("RGB", (256, 256))).size == (256, 256)
    # a unit square mapped onto the whole texture has size texels per unit length
    square = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    square.visual = trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]])
    assert texel_density(square, 256) == pytest.approx(256)
