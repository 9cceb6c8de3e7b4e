"""Random-weight models: the real repository layout and keys, real SD2/CLIP-H shapes for "full", v1.1 variants."""

from __future__ import annotations

import json

import pytest

from img2mesh.testing.random_weights import RAMP_V12, build_models, byte_level_clip_vocab, save_random_zero123pp
from img2mesh.zero123pp.weights import ZERO123PP_LAYOUT


def test_tiny_model_has_the_public_layout_and_keys(tiny_zero123pp):
    assert ZERO123PP_LAYOUT.missing(tiny_zero123pp) == []
    index = json.loads((tiny_zero123pp / "model_index.json").read_text())
    assert index["_class_name"] == "Zero123PlusPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["ramping_coefficients"] == list(RAMP_V12)
    assert len(RAMP_V12) == 77 and RAMP_V12[0] == 0.00301829120144248 and RAMP_V12[-1] == 1.1983819007873535
    scheduler = json.loads((tiny_zero123pp / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "linear" and scheduler["prediction_type"] == "v_prediction"
    assert scheduler["timestep_spacing"] == "linspace"
    vae_input = json.loads((tiny_zero123pp / "feature_extractor_vae" / "preprocessor_config.json").read_text())
    assert vae_input["image_std"] == [0.8] * 3 and vae_input["crop_size"] == {"height": 512, "width": 512}


def test_tiny_model_is_the_same_architecture_family(tiny_pipe):
    unet = tiny_pipe.unet
    assert unet.config.use_linear_projection and unet.config.cross_attention_dim == 32
    assert tiny_pipe.vae_scale_factor == 8  # 960x640 images ↔ 120x80 latents, 512² condition ↔ 64² latent
    assert tiny_pipe.vision_encoder.config.projection_dim == tiny_pipe.text_encoder.config.hidden_size == 32
    names = list(unet.attn_processors)
    assert sum(n.endswith("attn1.processor") for n in names) == sum(n.endswith("attn2.processor") for n in names) == 7


def test_full_size_matches_the_published_parameter_counts():
    models = build_models("full", byte_level_clip_vocab()[0])
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert counts == {
        "unet": 865_910_724,
        "vae": 83_653_863,
        "text_encoder": 340_387_840,
        "vision_encoder": 632_076_800,
    }
    assert models["unet"].config.attention_head_dim == (5, 10, 20, 20)
    assert sum(n.endswith("attn1.processor") for n in models["unet"].attn_processors) == 16


def test_a_v11_model_loads_with_the_v11_pose_table(tmp_path):
    from img2mesh.zero123pp import Zero123PlusPipeline

    folder = save_random_zero123pp(tmp_path / "random-model", version="v1.1")
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert "timestep_spacing" not in scheduler
    pipe = Zero123PlusPipeline.from_pretrained(folder)
    assert pipe.config.version == "v1.1"  # detected from the ramp, which starts at exactly 0 in v1.1
    assert pipe.config.ramping_coefficients[0] == 0.0
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert Zero123PlusPipeline.from_pretrained(folder, version="v1.2").config.version == "v1.2"


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        save_random_zero123pp(tmp_path / "m", size="huge")
