"""transforms.json datasets: exact round trip, the keys both tools read, and nerfstudio's own parser on our folder."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.cameras import zero123pp_cameras
from recon.dataset import read_dataset, read_views, write_dataset
from recon.errors import InputError
from recon.posed_views import PosedViews

REPO = Path(__file__).resolve().parents[2]


def make_views(size=48, normals=False, seed=0):
    """Views as they come from a PNG grid: 8-bit colours, computed (16-bit) masks, v1.2 cameras."""
    rng = np.random.default_rng(seed)
    pixels = np.full((3 * size, 2 * size, 3), 127, np.uint8)
    yy, xx = np.mgrid[: 3 * size, : 2 * size] % size
    blob = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    pixels[blob] = rng.integers(0, 256, size=(int(blob.sum()), 3))
    views = PosedViews.from_grid(Image.fromarray(pixels))
    if normals:
        n = rng.normal(size=(6, size, size, 3)).astype(np.float32)
        views.normals = n / np.linalg.norm(n, axis=-1, keepdims=True)
    return views


def assert_same_views(a: PosedViews, b: PosedViews):
    for name in ("images", "masks", "intrinsics", "cam_to_world"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.poses == b.poses
    assert (a.normals is None) == (b.normals is None)
    if a.normals is not None:
        np.testing.assert_array_equal(a.normals, b.normals)


def test_round_trip_is_exact(tmp_path):
    views = make_views(normals=True)
    assert 0 < views.masks.mean() < 1 and len(np.unique(views.masks)) > 2  # soft edges present
    path = write_dataset(views, tmp_path / "ds")
    assert path == tmp_path / "ds" / "transforms.json"
    assert_same_views(views, read_dataset(tmp_path / "ds"))
    assert not list((tmp_path / "ds").glob(".*"))  # no temporary files left


def test_images_copied_from_the_saved_views_are_the_bytes_an_encode_gives(tmp_path):
    views = make_views()
    views.save(tmp_path / "views")
    write_dataset(views, tmp_path / "encoded")
    write_dataset(views, tmp_path / "copied", images_from=tmp_path / "views")
    for i in range(len(views)):
        name = f"images/{i:02d}.png"
        assert (tmp_path / "copied" / name).read_bytes() == (tmp_path / "encoded" / name).read_bytes()
    copied, encoded = (tmp_path / name / "transforms.json" for name in ("copied", "encoded"))
    assert copied.read_text() == encoded.read_text()


def test_transforms_keys_for_nerfstudio_and_instant_ngp(tmp_path):
    views = make_views(size=64)
    meta = json.loads(write_dataset(views, tmp_path).read_text())
    f = 32 / math.tan(math.radians(15))
    assert meta["camera_model"] == "OPENCV" and (meta["w"], meta["h"]) == (64, 64)
    assert meta["fl_x"] == pytest.approx(f) and meta["fl_y"] == pytest.approx(f)
    assert (meta["cx"], meta["cy"]) == (32.0, 32.0)
    assert meta["camera_angle_x"] == pytest.approx(math.radians(30)) == meta["camera_angle_y"]
    assert meta["aabb_scale"] == 1 and meta["aabb"] == [[-1.0] * 3, [1.0] * 3]
    assert meta["scale"] == 0.5 and meta["offset"] == [0.5, 0.5, 0.5] and meta["up"] == [0.0, 0.0, 1.0]
    assert meta["img2mesh"]["poses"] == "v1.2"
    assert [fr["file_path"] for fr in meta["frames"]] == [f"images/{i:02d}.png" for i in range(6)]
    assert all("mask_path" not in fr for fr in meta["frames"])
    np.testing.assert_array_equal([fr["transform_matrix"] for fr in meta["frames"]], zero123pp_cameras("v1.2")[1])
    image = Image.open(tmp_path / meta["frames"][2]["file_path"])
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image)[..., 3], np.round(views.masks[2] * 255).astype(np.uint8))
    mask = np.asarray(Image.open(tmp_path / meta["frames"][2]["object_mask_path"]))
    np.testing.assert_array_equal(mask, np.round(views.masks[2] * 65535).astype(np.uint16))

    with_masks = json.loads(write_dataset(views, tmp_path / "m", nerfstudio_masks=True).read_text())
    assert [fr["mask_path"] for fr in with_masks["frames"]] == [f"masks/{i:02d}.png" for i in range(6)]


def test_per_frame_intrinsics_when_views_differ(tmp_path):
    views = make_views()
    views.intrinsics = views.intrinsics.copy()
    views.intrinsics[3, 0, 0] += 5.0
    views.poses = "custom"
    meta = json.loads(write_dataset(views, tmp_path).read_text())
    assert "fl_x" not in meta and meta["frames"][3]["fl_x"] == views.intrinsics[3, 0, 0]
    assert_same_views(views, read_dataset(tmp_path))


def test_reads_a_foreign_nerf_dataset(tmp_path):
    """A NeRF-synthetic style folder: RGBA images, only camera_angle_x, 3x4 matrices, no img2mesh keys."""
    _, c2w = zero123pp_cameras("v1.1", 3.0, 32)
    frames = []
    for i in range(2):
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[8:24, 8:24] = (200, 100, 50, 255)
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"r_{i}.png")
        frames.append({"file_path": f"r_{i}.png", "transform_matrix": c2w[i, :3].tolist()})
    angle = math.radians(49.134)
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    views = read_dataset(tmp_path)
    assert len(views) == 2 and views.poses == "custom"
    np.testing.assert_allclose(views.intrinsics[0, 0, 0], 16 / math.tan(angle / 2))
    np.testing.assert_allclose(views.cam_to_world, c2w[:2])
    assert views.masks[:, 16, 16].min() == 1.0 and views.masks[:, 0, 0].max() == 0.0


def test_dataset_errors(tmp_path):
    with pytest.raises(InputError, match=r"has no transforms\.json"):
        read_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        read_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(InputError, match="lists no frames"):
        read_dataset(tmp_path)
    write_dataset(make_views(), tmp_path / "ds")
    (tmp_path / "ds" / "images" / "04.png").unlink()
    with pytest.raises(InputError, match=r"Cannot read image .*04\.png"):
        read_dataset(tmp_path / "ds")


def test_read_views_reads_datasets(tmp_path):
    views = make_views()
    write_dataset(views, tmp_path)
    assert_same_views(views, read_views(tmp_path))


# --------------------------------------------------------------------------------------------- nerfstudio

# Run under nerfstudio's interpreter: its own parser and dataset read our folder; we print what they yield.
NERFSTUDIO_PROBE = """
import json, sys
from pathlib import Path
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

def parse(folder):
    config = NerfstudioDataParserConfig(
        data=Path(folder), orientation_method="none", center_method="none", auto_scale_poses=False,
        scale_factor=1.0, eval_mode="all",
    )
    outputs = config.setup().get_dataparser_outputs(split="train")
    cameras = outputs.cameras
    dataset = InputDataset(outputs)
    items = [dataset[i] for i in range(len(dataset))]
    return {
        "c2w": cameras.camera_to_worlds.tolist(),
        "fx": cameras.fx.squeeze(-1).tolist(), "fy": cameras.fy.squeeze(-1).tolist(),
        "cx": cameras.cx.squeeze(-1).tolist(), "cy": cameras.cy.squeeze(-1).tolist(),
        "width": cameras.width.squeeze(-1).tolist(), "height": cameras.height.squeeze(-1).tolist(),
        "camera_type": cameras.camera_type.squeeze(-1).tolist(),
        "distortion": cameras.distortion_params.abs().max().item(),
        "images": [str(p) for p in outputs.image_filenames],
        "masks": None if outputs.mask_filenames is None else [str(p) for p in outputs.mask_filenames],
        "aabb": outputs.scene_box.aabb.tolist(),
        "image_shapes": [list(item["image"].shape) for item in items],
        "alpha": [item["image"][..., 3].tolist() for item in items],
        "mask_pixels": [item["mask"][..., 0].tolist() if "mask" in item else None for item in items],
    }

import importlib.metadata, nerfstudio
print(json.dumps({
    "version": importlib.metadata.version("nerfstudio"), "module": nerfstudio.__file__,
    "folders": [parse(folder) for folder in sys.argv[1:]],
}))
"""


#: Where README command 2 puts nerfstudio's own code: `pip install --no-deps --target .venv/nerfstudio-no-deps
#: nerfstudio==1.1.5 viser==0.2.7`. The probe runs it with this interpreter, whose [test] extra holds the packages
#: the parser's imports need (nerfstudio's full requirements would pin numpy and protobuf below ours).
NERFSTUDIO_TARGET = Path(sys.prefix) / "nerfstudio-no-deps"
INSTALL = (
    f"{Path(sys.prefix) / 'bin' / 'pip'} install --no-deps --upgrade --target {NERFSTUDIO_TARGET} "
    "nerfstudio==1.1.5 viser==0.2.7"
)


@pytest.fixture(scope="module")
def nerfstudio() -> tuple[list[str], dict[str, str]]:
    """Command and environment that run Python with nerfstudio importable; fails (never skips) when it is missing.

    $IMG2MESH_NERFSTUDIO_PYTHON may name the interpreter of a full nerfstudio environment instead.
    """
    configured = os.environ.get("IMG2MESH_NERFSTUDIO_PYTHON")
    if configured:
        if not Path(configured).exists():
            pytest.fail(f"IMG2MESH_NERFSTUDIO_PYTHON names {configured}, which does not exist.")
        return [configured], dict(os.environ)
    if not (NERFSTUDIO_TARGET / "nerfstudio").is_dir():
        pytest.fail(f"nerfstudio is not installed for this test: run `{INSTALL}` (README command 2 does).")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(NERFSTUDIO_TARGET), os.environ.get("PYTHONPATH")]))
    )
    return [sys.executable], env


def run_probe(nerfstudio: tuple[list[str], dict[str, str]], *folders: Path) -> list[dict]:
    command, env = nerfstudio
    result = subprocess.run(
        [*command, "-c", NERFSTUDIO_PROBE, *map(str, folders)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    # nerfstudio's own code ran, the version the README names (or, from a configured environment, a 1.1 release).
    assert probe["version"].startswith("1.1."), probe["version"]
    if not os.environ.get("IMG2MESH_NERFSTUDIO_PYTHON"):
        assert probe["version"] == "1.1.5"
        assert Path(probe["module"]).resolve().is_relative_to(NERFSTUDIO_TARGET.resolve()), probe["module"]
    return probe["folders"]


def test_nerfstudio_parser_yields_our_cameras(nerfstudio, tmp_path):
    views = make_views(size=40)
    write_dataset(views, tmp_path / "plain")
    write_dataset(views, tmp_path / "masked", nerfstudio_masks=True)
    plain, masked = run_probe(nerfstudio, tmp_path / "plain", tmp_path / "masked")

    # Poses come out unchanged (nerfstudio holds them in float32), in our frame order.
    np.testing.assert_allclose(plain["c2w"], views.cam_to_world[:, :3, :], atol=1e-6)
    assert [Path(p).name for p in plain["images"]] == [f"{i:02d}.png" for i in range(6)]
    np.testing.assert_allclose(plain["fx"], views.intrinsics[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(plain["fy"], views.intrinsics[:, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(plain["cx"], views.intrinsics[:, 0, 2])
    np.testing.assert_allclose(plain["cy"], views.intrinsics[:, 1, 2])
    assert plain["width"] == [40] * 6 and plain["height"] == [40] * 6
    assert plain["distortion"] == 0.0 and plain["camera_type"] == [1] * 6  # CameraType.PERSPECTIVE
    # Its default region of interest (scene_scale 1) is our object box, [-1, 1]^3.
    assert plain["aabb"] == [[-1.0] * 3, [1.0] * 3]
    # Images stay RGBA: nerfstudio blends the alpha with the model's background colour.
    assert plain["image_shapes"] == [[40, 40, 4]] * 6
    np.testing.assert_allclose(plain["alpha"], np.round(views.masks * 255) / 255, atol=1e-6)
    assert plain["masks"] is None and plain["mask_pixels"] == [None] * 6

    # With mask_path, nerfstudio samples only where the mask is non-zero: exactly our object's pixels.
    np.testing.assert_allclose(masked["c2w"], plain["c2w"])
    assert [Path(p).name for p in masked["masks"]] == [f"{i:02d}.png" for i in range(6)]
    np.testing.assert_array_equal(masked["mask_pixels"], views.masks > 0)
