"""Zero123PlusPipeline on the tiny random model: shapes, tiling, seeding, conditioning paths, batches, poses."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from img2mesh.errors import InputError
from img2mesh.zero123pp.pipeline import composite_on_gray, view_poses
from recon.cameras import ZERO123PP_POSES

STEPS = 1


def latents(pipe, image, seed=0, steps=STEPS, **kwargs) -> torch.Tensor:
    """Final latents of a run seeded through a generator."""
    generator = torch.Generator().manual_seed(seed)
    return pipe(image, num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images


def test_output_is_a_960x640_grid_with_the_poses_of_its_six_views(tiny_pipe, photo):
    out = tiny_pipe(photo, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    (grid,) = out.images
    assert grid.size == (640, 960) and grid.mode == "RGB"
    assert out.version == "v1.2"
    assert list(out.poses) == [0, 1, 2, 3, 4, 5]
    assert [a for a, _ in out.poses.values()] == [30, 90, 150, 210, 270, 330]
    assert [e for _, e in out.poses.values()] == [20, -10, 20, -10, 20, -10]


def test_output_types_agree(tiny_pipe, photo):
    runs = {}
    for output_type in ("np", "pt"):
        torch.manual_seed(3)
        runs[output_type] = tiny_pipe(photo, num_inference_steps=STEPS, output_type=output_type)
    grid_np = runs["np"].images
    assert grid_np.shape == (1, 960, 640, 3) and grid_np.dtype == np.float32
    assert grid_np.min() >= 0.0 and grid_np.max() <= 1.0
    assert runs["pt"].images.shape == (1, 3, 960, 640)
    assert torch.equal(runs["pt"].images.permute(0, 2, 3, 1), torch.from_numpy(grid_np))
    torch.manual_seed(3)
    pil = tiny_pipe(photo, num_inference_steps=STEPS).images[0]
    assert np.array_equal(np.asarray(pil), np.round(grid_np[0] * 255).astype(np.uint8))
    latent = latents(tiny_pipe, photo)
    assert latent.shape == (1, 4, 120, 80)


def test_seeded_runs_reproduce_and_seeds_differ(tiny_pipe, photo):
    first = latents(tiny_pipe, photo, seed=1)
    assert torch.equal(first, latents(tiny_pipe, photo, seed=1))
    assert not torch.equal(first, latents(tiny_pipe, photo, seed=2))
    # Global seed alone (the reference's fidelity mode) reproduces too.
    torch.manual_seed(5)
    first = tiny_pipe(photo, num_inference_steps=STEPS, output_type="latent").images
    torch.manual_seed(5)
    assert torch.equal(first, tiny_pipe(photo, num_inference_steps=STEPS, output_type="latent").images)


@pytest.mark.parametrize("as_list", [False, True])
def test_a_generator_alone_makes_runs_reproducible(tiny_pipe, photo, as_list):
    def run(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(9)
        generator = [generator] if as_list else generator
        return tiny_pipe(photo, num_inference_steps=STEPS, generator=generator, output_type="latent").images

    assert torch.equal(run(1), run(2))


def test_the_condition_image_changes_the_views(tiny_pipe, make_photo):
    assert not torch.equal(latents(tiny_pipe, make_photo(0)), latents(tiny_pipe, make_photo(1)))


@pytest.mark.parametrize("switch", ["reference_attention", "flexdiffuse"])
def test_each_conditioning_path_matters(tiny_pipe, photo, switch):
    on = latents(tiny_pipe, photo)
    off = latents(tiny_pipe, photo, **{switch: False})
    assert off.shape == on.shape and torch.isfinite(off).all()
    assert (on - off).abs().mean() > 1e-3


def test_reference_attention_sees_the_condition_through_every_self_attention_layer(tiny_pipe, photo):
    calls = []
    hooks = []
    for name, module in tiny_pipe.unet.named_modules():
        if name.endswith("attn1") or name == "conv_out":
            hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: calls.append(name)))
    try:
        latents(tiny_pipe, photo)
    finally:
        for hook in hooks:
            hook.remove()
    layers = [n.removesuffix(".processor") for n in tiny_pipe.denoiser.reference_layers]
    assert len(layers) == 7  # tiny UNet: 2 down + 1 mid + 4 up transformer blocks
    # Per step, the reference pass reaches every attn1 in execution order and stops after the last one (its conv_out
    # would be wasted work); then the main pass runs every attn1 again, and conv_out.
    assert calls == (layers + layers + ["conv_out"]) * STEPS
    assert tiny_pipe.denoiser.bank.keys_values == {} and tiny_pipe.denoiser.bank.mode == "off"


def test_the_prompt_keys_and_values_are_projected_once_per_step_for_both_passes(tiny_pipe, photo):
    cross = [m for name, m in tiny_pipe.unet.named_modules() if name.endswith("attn2")]
    calls = []
    hooks = [m.to_k.register_forward_hook(lambda *_: calls.append(1)) for m in cross]
    try:
        latents(tiny_pipe, photo)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(cross) == 7 and len(calls) == len(cross) * STEPS


def test_guidance_one_runs_a_single_unet_batch(tiny_pipe, photo):
    batches = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        guided = latents(tiny_pipe, photo, guidance_scale=4.0)
        plain = latents(tiny_pipe, photo, guidance_scale=1.0)
    finally:
        hook.remove()
    assert batches == [2] * (2 * STEPS) + [1] * (2 * STEPS)
    assert not torch.equal(guided, plain)


def test_a_batch_equals_the_single_runs_with_one_generator_per_image(tiny_pipe, make_photo):
    photos = [make_photo(0), make_photo(1)]
    batch = tiny_pipe(
        photos,
        num_inference_steps=STEPS,
        generator=[torch.Generator().manual_seed(s) for s in (4, 5)],
        output_type="np",
    )
    singles = [
        tiny_pipe(p, num_inference_steps=STEPS, generator=[torch.Generator().manual_seed(s)], output_type="np")
        for p, s in zip(photos, (4, 5), strict=True)
    ]
    assert batch.images.shape == (2, 960, 640, 3)
    for i, single in enumerate(singles):
        np.testing.assert_allclose(batch.images[i], single.images[0], atol=1e-4)  # batched kernels round differently


def test_rgba_is_composited_on_gray_127():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 10, 60)
    rgba[0, :, 3] = 255
    rgba[1, :, 3] = 128
    rgb = np.asarray(composite_on_gray(PIL.Image.fromarray(rgba, "RGBA")))
    assert (rgb[0] == (200, 10, 60)).all()
    assert (rgb[2:] == 127).all()
    assert np.abs(rgb[1].astype(int) - np.round((np.array([200, 10, 60]) * 128 + 127 * 127) / 255)).max() <= 1
    rgb_in = PIL.Image.new("RGB", (4, 4), (1, 2, 3))
    assert composite_on_gray(rgb_in) is rgb_in


def test_a_transparent_input_conditions_like_the_plain_gray_image(tiny_pipe):
    clear = PIL.Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    gray = PIL.Image.new("RGB", (64, 64), (127, 127, 127))
    assert torch.equal(latents(tiny_pipe, clear), latents(tiny_pipe, gray))


def test_pose_tables_follow_recon_cameras():
    for version in ("v1.1", "v1.2"):
        poses = ZERO123PP_POSES[version]
        assert view_poses(version) == dict(enumerate(zip(poses.azimuths, poses.elevations, strict=True)))
    assert [e for _, e in view_poses("v1.1").values()] == [30, -20, 30, -20, 30, -20]
    assert [e for _, e in view_poses("v1.2").values()] == [20, -10, 20, -10, 20, -10]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"image": "photo.png"}, "PIL images"),
        ({"image": PIL.Image.new("L", (8, 8))}, "mode L"),
        ({"num_inference_steps": 0}, "positive integer"),
        ({"output_type": "jpg"}, "output_type"),
        ({"generator": [torch.Generator(), torch.Generator()]}, "one per image"),
        ({"control_image": PIL.Image.new("RGB", (640, 960))}, "pass both"),
    ],
)
def test_bad_calls_get_a_sentence(tiny_pipe, photo, kwargs, words):
    kwargs = {"image": photo, "num_inference_steps": 1, **kwargs}
    with pytest.raises(InputError, match=words):
        tiny_pipe(**kwargs)


def test_other_samplers_run_on_the_model_schedule(tiny_pipe, photo):
    from img2mesh.zero123pp.schedulers import make_scheduler

    # Two steps: on a single trailing step every sampler jumps straight to the predicted x0.
    default = tiny_pipe.scheduler
    reference = latents(tiny_pipe, photo, steps=2, guidance_scale=1.0)
    try:
        for name in ("euler", "ddim", "dpm_solver"):
            tiny_pipe.scheduler = make_scheduler(name, default.config)
            assert tiny_pipe.scheduler.config.prediction_type == "v_prediction"
            assert tiny_pipe.scheduler.config.beta_schedule == "linear"
            out = latents(tiny_pipe, photo, steps=2, guidance_scale=1.0)
            assert torch.isfinite(out).all()
            assert not torch.equal(out, reference), name
    finally:
        tiny_pipe.scheduler = default
