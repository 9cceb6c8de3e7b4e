"""Input preprocessing on real image files, and rembg run for real on a small ONNX model built here."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2mesh.cutout import (
    MAX_INPUT_SIDE,
    OBJECT_ALPHA,
    PreprocessConfig,
    has_cutout_alpha,
    load_image,
    preprocess,
    remove_background,
)
from img2mesh.errors import InputError
from img2mesh.zero123pp.pipeline import composite_on_gray


def alpha_bbox(image: Image.Image) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), exclusive ends, of the pixels with alpha >= OBJECT_ALPHA."""
    alpha = np.asarray(image.getchannel("A")) >= OBJECT_ALPHA
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def assert_sentence(message: str, *parts: str) -> None:
    assert "\n" not in message and message.endswith("."), message
    for part in parts:
        assert part in message, (part, message)


def cutout_photo(width: int = 300, height: int = 200) -> Image.Image:
    """An RGBA cut-out: an off-centre orange ellipse, about 100 x 70 pixels, on a transparent background."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((xx - 80) / 50) ** 2 + ((yy - 120) / 35) ** 2 <= 1
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = (230, 120, 20)
    rgba[..., 3] = np.where(inside, 255, 0)
    return Image.fromarray(rgba, "RGBA")


# --- loading -------------------------------------------------------------------------------------------------------


def test_png_alpha_is_kept(tmp_path: Path) -> None:
    photo = cutout_photo()
    photo.save(tmp_path / "in.png")
    loaded = load_image(tmp_path / "in.png")
    assert loaded.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(photo))


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 60 wide x 40 tall, left half red, right half blue; orientation 6 means "rotate 90° clockwise to view".
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)

    loaded = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert loaded.shape == (60, 40, 3)
    # Rotating clockwise brings the stored left (red) half to the top.
    assert loaded[5, 20, 0] > 200 and loaded[5, 20, 2] < 60
    assert loaded[55, 20, 2] > 200 and loaded[55, 20, 0] < 60


def test_webp_is_read(tmp_path: Path) -> None:
    photo = cutout_photo()
    photo.save(tmp_path / "in.webp", lossless=True)
    loaded = load_image(tmp_path / "in.webp")
    assert loaded.mode == "RGBA"
    visible = np.asarray(photo)[..., 3] > 0
    np.testing.assert_array_equal(np.asarray(loaded)[visible], np.asarray(photo)[visible])


def test_16_bit_grayscale_png_keeps_its_tones(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "depth16.png")
    loaded = np.asarray(load_image(tmp_path / "depth16.png"))
    assert loaded.shape == (8, 64, 3)
    np.testing.assert_allclose(loaded[0, :, 0], ramp[0] / 257, atol=0.5)


def test_bad_input_files_get_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(InputError) as missing:
        load_image(tmp_path / "nope.png")
    assert_sentence(str(missing.value), "nope.png", "does not exist")

    with pytest.raises(InputError) as folder:
        load_image(tmp_path)
    assert_sentence(str(folder.value), "is a folder")

    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(InputError) as text:
        load_image(tmp_path / "notes.png")
    assert_sentence(str(text.value), "notes.png", "not a readable image")

    cutout_photo().save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as truncated:
        load_image(tmp_path / "cut.png")
    assert_sentence(str(truncated.value), "cut.png", "corrupt or truncated")

    cutout_photo().convert("RGB").save(tmp_path / "scan.bmp")
    with pytest.raises(InputError) as bmp:
        load_image(tmp_path / "scan.bmp")
    assert_sentence(str(bmp.value), "scan.bmp", "BMP", "PNG, JPEG and WebP")


# --- cropping and padding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "size"), [(0.85, 256), (0.5, 128)])
def test_object_is_recentred_at_its_share(share: float, size: int) -> None:
    out = preprocess(cutout_photo(), PreprocessConfig(object_share=share, size=size, remove_bg="auto"))
    assert out.mode == "RGBA" and out.size == (size, size)
    top, bottom, left, right = alpha_bbox(out)
    in_top, in_bottom, in_left, in_right = alpha_bbox(cutout_photo())
    # The ellipse is wider than tall: its width takes the share, its height keeps the aspect ratio.
    assert abs((right - left) - share * size) <= 2
    assert abs((bottom - top) - (in_bottom - in_top) / (in_right - in_left) * share * size) <= 2
    assert abs((left + right) / 2 - size / 2) <= 1
    assert abs((top + bottom) / 2 - size / 2) <= 1
    pixels = np.asarray(out)
    # Colour kept inside the object, padding fully transparent.
    np.testing.assert_allclose(pixels[size // 2, size // 2], (230, 120, 20, 255), atol=2)
    assert pixels[0, 0, 3] == 0 and pixels[-1, -1, 3] == 0


def test_object_larger_than_the_frame_is_padded() -> None:
    # remove_bg none on an opaque photo: the whole frame is the object, so it is padded, not cropped.
    photo = Image.fromarray(np.full((90, 160, 3), (10, 200, 30), np.uint8))
    out = preprocess(photo, PreprocessConfig(remove_bg="none", size=200))
    top, bottom, left, right = alpha_bbox(out)
    assert abs((right - left) - 170) <= 2 and abs((bottom - top) - 170 * 90 / 160) <= 2
    gray = np.asarray(composite_on_gray(out))  # what Zero123++ sees
    assert tuple(gray[2, 100]) == (127, 127, 127)
    np.testing.assert_allclose(gray[100, 100], (10, 200, 30), atol=2)


def test_only_a_real_cutout_alpha_counts() -> None:
    photo = cutout_photo()
    assert has_cutout_alpha(photo)
    assert not has_cutout_alpha(photo.convert("RGB"))
    opaque = photo.copy()
    opaque.putalpha(255)
    assert not has_cutout_alpha(opaque)  # an RGBA export of a plain photo still needs its background removed
    empty = photo.copy()
    empty.putalpha(0)
    assert not has_cutout_alpha(empty)


def test_empty_alpha_gets_a_sentence() -> None:
    empty = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    with pytest.raises(InputError) as error:
        preprocess(empty, PreprocessConfig(remove_bg="none"))
    assert_sentence(str(error.value), "Nothing of the object is left", "--remove-bg none")


def test_bad_share_and_size_get_a_sentence() -> None:
    with pytest.raises(InputError, match="object_share"):
        preprocess(cutout_photo(), PreprocessConfig(object_share=1.5))
    with pytest.raises(InputError, match="at least 16"):
        preprocess(cutout_photo(), PreprocessConfig(size=8))


# --- rembg, for real, on an ONNX model made here -------------------------------------------------------------------


@pytest.fixture
def rembg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty rembg model folder (rembg loads custom models only from under it), with downloads off."""
    home = tmp_path / "u2net_home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def sigmoid_red_model(rembg_home: Path) -> Path:
    """A U²-Net-shaped ONNX model (1x3x320x320 → 1x1x320x320) whose mask is the sigmoid of the red channel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["red"]),
        helper.make_node("Sigmoid", ["red"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sigmoid_of_red",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = rembg_home / "sigmoid_red.onnx"
    onnx.save(model, path)
    return path


def test_rembg_alpha_follows_the_model_output(sigmoid_red_model: Path) -> None:
    # A red ramp across a 320x320 photo (the model's input size, so rembg does not resample it).
    red = np.tile(np.linspace(0, 255, 320).round().astype(np.uint8), (320, 1))
    rgb = np.stack([red, np.full_like(red, 90), np.full_like(red, 40)], axis=-1)
    cutout = remove_background(Image.fromarray(rgb), PreprocessConfig(rembg_model=str(sigmoid_red_model)))

    # What the model computes: rembg scales by the image maximum, normalises with ImageNet statistics, and
    # min-max stretches the mask to [0, 255].
    x = (red / 255.0 - 0.485) / 0.229
    mask = 1 / (1 + np.exp(-x))
    expected = (mask - mask.min()) / (mask.max() - mask.min()) * 255
    alpha = np.asarray(cutout.getchannel("A")).astype(float)
    assert np.abs(alpha - expected).max() <= 1.5
    np.testing.assert_array_equal(np.asarray(cutout)[..., :3], rgb)


def test_auto_runs_rembg_on_an_opaque_photo(sigmoid_red_model: Path) -> None:
    # A red box on a blue background: the model keeps the box, and preprocessing recentres it.
    rgb = np.zeros((240, 400, 3), np.uint8)
    rgb[..., 2] = 255
    rgb[40:120, 250:370] = (255, 0, 0)
    out = preprocess(Image.fromarray(rgb), PreprocessConfig(rembg_model=str(sigmoid_red_model), size=200))
    top, bottom, left, right = alpha_bbox(out)
    assert abs((right - left) - 170) <= 3 and abs((bottom - top) - 170 * 80 / 120) <= 3
    assert abs((left + right) / 2 - 100) <= 2 and abs((top + bottom) / 2 - 100) <= 2
    assert np.asarray(out)[5, 100, 3] == 0


def test_auto_keeps_an_existing_cutout_without_rembg(rembg_home: Path) -> None:
    # The configured rembg model does not exist, so any call to rembg would fail: auto must not make one.
    config = PreprocessConfig(rembg_model=str(rembg_home / "absent.onnx"))
    photo = cutout_photo()
    np.testing.assert_array_equal(np.asarray(remove_background(photo, config)), np.asarray(photo))
    with pytest.raises(InputError) as error:
        remove_background(photo, PreprocessConfig(remove_bg="rembg", rembg_model=config.rembg_model))
    assert_sentence(str(error.value), "absent.onnx", "does not exist")


def test_missing_rembg_model_offline_names_the_file(rembg_home: Path) -> None:
    photo = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(InputError) as error:
        preprocess(photo, PreprocessConfig(rembg_model="u2net"))
    assert_sentence(str(error.value), str(rembg_home), "u2net.onnx", "U2NET_HOME", "--remove-bg none", "https://")
    assert list(rembg_home.iterdir()) == []  # nothing was downloaded or created


def test_unknown_or_misplaced_rembg_models_get_a_sentence(rembg_home: Path, tmp_path: Path) -> None:
    photo = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(InputError) as unknown:
        remove_background(photo, PreprocessConfig(rembg_model="u3net"))
    assert_sentence(str(unknown.value), "'u3net'", "u2net")

    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"")
    with pytest.raises(InputError) as misplaced:
        remove_background(photo, PreprocessConfig(rembg_model=str(outside)))
    assert_sentence(str(misplaced.value), str(rembg_home), "U2NET_HOME")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_huge_photo_is_downscaled_with_one_line_of_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    # Pillow's decompression-bomb limit lowered so that a small file crosses it, as a 100-megapixel photo would.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3_000_000)
    path = tmp_path / f"big{suffix}"
    Image.new("RGB", (MAX_INPUT_SIDE * 2 + 100, 600), (200, 40, 40)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning reaches the user
        with caplog.at_level(logging.WARNING, logger="img2mesh"):
            image = load_image(path)
    assert max(image.size) <= MAX_INPUT_SIDE and image.size[0] / image.size[1] == pytest.approx(8292 / 600, rel=0.02)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} is 8292x600 pixels; downscaled to {image.size[0]}x{image.size[1]}."
    ]
