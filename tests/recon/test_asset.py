"""Game-ready export of a real fit: every preset's GLB and the --lods/--height/albedo path pass the Khronos
glTF-Validator with no error and no warning, each level of detail is a closed 2-manifold with its own power-of-two
texture, the object stands on y = 0 at its height, and the OBJ/MTL pair and the PLY load back in trimesh and PyVista.

One fit (the duck's oracle views, the CPU preset cut to 80 + 80 steps: what is checked here is the meshing, texturing
and export, not the fit's quality) serves every test; each preset contributes its mesh, texture and export sections,
which is where presets differ after the fit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner

from img2mesh.cli import cli
from img2mesh.commands.options import config_overrides
from img2mesh.config import load_config
from recon.asset import finish_asset, level_texture_size
from recon.evaluation.mesh_checks import topology_defects
from recon.evaluation.oracle import load_mesh, oracle_views
from recon.export import export_levels
from recon.fit import fit_fields

MESHES = Path(__file__).resolve().parents[1] / "data" / "meshes"

#: The export paths checked: (name, preset, overrides).
PATHS = [
    ("default", "default", {}),
    ("fast", "fast", {}),
    ("lowpoly", "lowpoly", {}),
    ("lods", "default", {"export.lods": [20000, 5000, 1000], "export.height": 1.5, "export.colour": "albedo"}),
]


@pytest.fixture(scope="module")
def fit():
    views = oracle_views(load_mesh(MESHES / "duck.glb")).views
    recon = dataclasses.replace(load_config("cpu").recon, iterations=(80, 80))
    return fit_fields(views, recon, device="cpu", progress=False), views


@pytest.fixture(scope="module")
def exported(fit, tmp_path_factory) -> dict[str, tuple[list[trimesh.Trimesh], list[Path]]]:
    """Per export path: its meshes and the files written (GLB; OBJ and PLY too for the lowpoly preset)."""
    fields, views = fit
    out = tmp_path_factory.mktemp("asset")
    results = {}
    for name, preset, overrides in PATHS:
        config = load_config(preset, overrides)
        meshes = finish_asset(fields, views, config.mesh, config.texture, config.export)
        files = export_levels(meshes, out / f"{name}.glb", height=config.export.height)
        if name == "lowpoly":
            files += export_levels(meshes, out / f"{name}.obj") + export_levels(meshes, out / f"{name}.ply")
        results[name] = (meshes, files)
    return results


def test_every_preset_and_path_passes_the_gltf_validator(exported, gltf_validator):
    glbs = [file for _, files in exported.values() for file in files if file.suffix == ".glb"]
    assert len(glbs) == 6  # default, fast, lowpoly and three levels of detail
    for report in gltf_validator(*glbs):
        issues = report["issues"]
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, (report["file"], issues["messages"])
        assert report["info"]["hasTextures"] and report["info"]["totalTriangleCount"] > 500


def test_levels_of_detail_are_closed_manifolds_with_their_own_textures(exported):
    meshes, files = exported["lods"]
    assert [f.name for f in files] == ["lods_lod0.glb", "lods_lod1.glb", "lods_lod2.glb"]
    loaded = [trimesh.load(f, force="mesh") for f in files]
    faces = [len(m.faces) for m in loaded]
    assert faces[0] <= 20000 and faces[1] <= 5000 and faces[2] <= 1000 and faces[0] > faces[1] > faces[2]
    sizes = [m.visual.material.baseColorTexture.size[0] for m in loaded]
    assert sizes == [1024, 512, 256] == [level_texture_size(1024, n, 20000) for n in (20000, 5000, 1000)]
    for mesh in loaded:
        welded = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)  # as an engine welds by position
        assert topology_defects(welded) == {"boundary_edges": 0, "non_manifold_edges": 0, "non_manifold_vertices": 0}
        assert welded.is_watertight and welded.volume > 0
    # --height 1.5: the finest level is 1.5 m high and stands on y = 0; the others share its placement
    assert loaded[0].extents[1] == pytest.approx(1.5, abs=1e-3) and loaded[0].bounds[0, 1] == pytest.approx(0, abs=1e-3)
    for mesh in loaded[1:]:
        assert abs(mesh.extents[1] - 1.5) < 0.05 and abs(mesh.bounds[0, 1]) < 0.02
    # albedo: the default path's texture (same mesh, same atlas) divided by the learnt shading, which is at most 1
    views = np.asarray(exported["default"][0][0].visual.material.baseColorTexture, dtype=float)
    albedo = np.asarray(meshes[0].visual.material.baseColorTexture, dtype=float)
    assert views.shape == albedo.shape
    assert (albedo >= views - 2).mean() > 0.99 and albedo.mean() > views.mean() + 5


def test_lowpoly_carries_a_normal_map_and_every_format_loads(exported):
    pv = pytest.importorskip("pyvista")
    meshes, files = exported["lowpoly"]
    assert meshes[0].visual.material.normalTexture.size == (512, 512)
    glb, obj, ply = (next(f for f in files if f.suffix == suffix) for suffix in (".glb", ".obj", ".ply"))
    assert (obj.parent / "lowpoly.mtl").is_file() and (obj.parent / "lowpoly.png").is_file()
    for path in (glb, obj, ply):
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(meshes[0].faces)
        assert loaded.extents[1] == pytest.approx(1.0, abs=1e-3) and loaded.bounds[0, 1] == pytest.approx(0, abs=1e-3)
    assert trimesh.load(obj, force="mesh").visual.material.image.size == (512, 512)
    assert pv.read(obj).active_texture_coordinates is not None
    assert {"RGB", "RGBA"} & set(pv.read(ply).array_names)
    plotter = pv.Plotter(off_screen=True)
    plotter.import_gltf(str(glb))
    assert plotter.renderer.actors
    image = plotter.screenshot(return_img=True)
    plotter.close()
    assert np.asarray(image).std() > 5  # something was drawn


def test_cli_options_set_the_export_config():
    overrides = config_overrides({"lods": "20000,5000,1000", "height": 1.5, "normal_map": True, "colour": "albedo"})
    export = load_config(None, overrides).export
    assert (export.lods, export.height, export.normal_map, export.colour) == ((20000, 5000, 1000), 1.5, True, "albedo")
    assert load_config("lowpoly").export.normal_map and not load_config("default").export.normal_map


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--lods", "1000,5000", "strictly decreasing"), ("--height", "0", "positive height in metres")],
)
def test_cli_refuses_bad_export_options_before_any_work(tmp_path, option, value, message):
    grid = tmp_path / "views.png"
    grid.write_bytes(b"never read")
    result = CliRunner().invoke(cli, ["recon", str(grid), "--export", str(tmp_path / "m.glb"), option, value])
    assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views.png"]
