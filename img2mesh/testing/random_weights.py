"""Random-weight Zero123++ models in the real repository layout, for tests and GPU benchmarks.

The build machines cannot download the 5.6 GB of real weights, so tests and speed work use models that have the
real folder layout and config keys (``model_index.json`` with its 77 ``ramping_coefficients``, one folder per
component, safetensors files) and load through the same :meth:`Zero123PlusPipeline.from_pretrained` path as the
real thing:

- ``size="tiny"``: the same architecture family (cross-attention UNet whose transformer blocks have ``attn1`` and
  ``attn2``, a four-level ``AutoencoderKL`` so latents are 1/8 of the image, CLIP text and vision towers) with tiny
  channels; it samples a 640x960 grid on a CPU in seconds.
- ``size="full"``: the real shapes (SD2 UNet, SD VAE, 23-layer OpenCLIP-H text tower, CLIP ViT-H/14 vision tower), so
  a GPU run costs exactly what the real weights cost. Stored dtypes follow the v1.2 repository (fp32 UNet, fp16
  rest). Models are built on the ``meta`` device and only their tensors are drawn, so nothing is initialised twice.

Weights are drawn from a seeded generator: normal with standard deviation 1/sqrt(fan-in) for matrices and
convolutions (activations keep their scale through the random network), small normal biases, unit norm gains.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Literal

import torch

#: v1.2 ramping coefficients (77 floats, from sudo-ai/zero123plus-v1.2's model index), written into random models.
RAMP_V12 = (
    0.00301829120144248, 0.2204633206129074, 0.21527841687202454, 0.23498539626598358, 0.1914631873369217,
    0.20188239216804504, 0.19352824985980988, 0.17249998450279236, 0.15826298296451569, 0.15236389636993408,
    0.13444548845291138, 0.12044154852628708, 0.12808501720428467, 0.1271015852689743, 0.13629068434238434,
    0.14516159892082214, 0.15645112097263336, 0.16885493695735931, 0.18022602796554565, 0.1958882212638855,
    0.21415705978870392, 0.23056700825691223, 0.2505834102630615, 0.2574525773525238, 0.275470107793808,
    0.2808215022087097, 0.29953837394714355, 0.2967497408390045, 0.2883710563182831, 0.3023308515548706,
    0.3054688572883606, 0.32596179842948914, 0.3225354254245758, 0.3140765428543091, 0.3288663625717163,
    0.3435625731945038, 0.3342442810535431, 0.32937031984329224, 0.35734811425209045, 0.3601177930831909,
    0.3517529368400574, 0.3810708224773407, 0.40007662773132324, 0.4264647364616394, 0.3977527916431427,
    0.4314143657684326, 0.49558719992637634, 0.4665665030479431, 0.48960328102111816, 0.5141982436180115,
    0.5230164527893066, 0.5266074538230896, 0.5456079840660095, 0.5737904906272888, 0.5882097482681274,
    0.6210350394248962, 0.6530380845069885, 0.6383244395256042, 0.6792004704475403, 0.6567418575286865,
    0.7517656683921814, 0.736494243144989, 0.7586457133293152, 0.8130561709403992, 0.9578766226768494,
    1.001284122467041, 0.9404520988464355, 1.004292368888855, 0.9145274758338928, 0.9771682620048523,
    1.0350638628005981, 1.0265849828720093, 1.0594775676727295, 0.980824887752533, 1.0715670585632324,
    1.0140161514282227, 1.1983819007873535,
)  # fmt: skip

#: The first 51 v1.1 coefficients, the only ones this project has; random v1.1 models continue with the v1.2
#: values from position 51 on (both lists track each other closely there), so they are not the real v1.1 ramp.
RAMP_V11_HEAD = (
    0.0, 0.2060057818889618, 0.18684479594230652, 0.24342191219329834, 0.18507817387580872, 0.1703828126192093,
    0.15628913044929504, 0.14174538850784302, 0.13617539405822754, 0.13569170236587524, 0.1269884556531906,
    0.1200924888253212, 0.12816639244556427, 0.13058121502399445, 0.14201879501342773, 0.15004529058933258,
    0.1620427817106247, 0.17207716405391693, 0.18534132838249207, 0.20002241432666779, 0.21657466888427734,
    0.22996725142002106, 0.24613411724567413, 0.25141021609306335, 0.26613450050354004, 0.271847128868103,
    0.2850190997123718, 0.285749226808548, 0.2813953757286072, 0.29509517550468445, 0.30109965801239014,
    0.31370124220848083, 0.3134534955024719, 0.3108579218387604, 0.32147032022476196, 0.33548328280448914,
    0.3301997184753418, 0.3254660964012146, 0.3514464199542999, 0.35993096232414246, 0.3510829508304596,
    0.37661612033843994, 0.3913513123989105, 0.42122599482536316, 0.3954688012599945, 0.4260983467102051,
    0.479139506816864, 0.4588979482650757, 0.4873477816581726, 0.5095643401145935,
)  # fmt: skip

#: Folder, inside a random model, of the random normal ControlNet written by ``with_controlnet=True``.
CONTROLNET_SUBFOLDER = "normal_controlnet"

_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")

# Architectures. "full" is SD2 / OpenCLIP-H / CLIP ViT-H/14 as used by zero123plus-v1.2.
_UNET = {
    "full": dict(
        sample_size=96,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    # Attention only at 1/4 and 1/8 of the latent resolution keeps 640x960 sampling cheap on a CPU.
    "tiny": dict(
        sample_size=32,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 2, 2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
        norm_num_groups=4,
    ),
}
_VAE = {
    "full": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=768),
    # No attention in the tiny VAE's mid block: at 120x80 latents it would cost more than the whole UNet.
    "tiny": dict(
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        mid_block_add_attention=False,
    ),
}
_TEXT = {
    "full": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 projection_dim=512, hidden_act="gelu"),
    "tiny": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
}  # fmt: skip
_VISION = {
    "full": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                 patch_size=14, projection_dim=1024, hidden_act="gelu"),
    "tiny": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, patch_size=32,
                 projection_dim=32),
}  # fmt: skip
_CONTROL_EMBEDDING = {"full": (16, 32, 96, 256), "tiny": (8, 8, 8, 8)}


def save_random_zero123pp(
    folder: str | Path,
    size: Literal["tiny", "full"] = "tiny",
    version: Literal["v1.2", "v1.1"] = "v1.2",
    with_controlnet: bool = False,
    seed: int = 0,
    tokenizer_files: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Write a random-weight Zero123++ model into ``folder`` (created) in the public repository layout.

    ``device`` is where the random numbers are drawn, by default CUDA when present (the 1.9 billion full-size
    weights in seconds instead of ~40 s on a CPU); values repeat per device and ``seed``, not across devices.

    ``tokenizer_files`` is a folder with a CLIP ``vocab.json`` and ``merges.txt``; without it a byte-level CLIP
    vocabulary (no merges) is written. ``with_controlnet`` adds a random normal ControlNet of the same size in
    ``folder / CONTROLNET_SUBFOLDER``. Returns ``folder``.
    """
    if size not in _UNET:
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    if version not in ("v1.2", "v1.1"):
        raise ValueError(f"version must be 'v1.2' or 'v1.1', got {version!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device).manual_seed(seed)
    small = torch.float32 if size == "tiny" else torch.float16  # v1.2 stores everything but the UNet in fp16

    vocab = write_clip_tokenizer(folder / "tokenizer", tokenizer_files)
    models = build_models(size, vocab)
    unet, vae, text, vision = (models[k] for k in ("unet", "vae", "text_encoder", "vision_encoder"))
    _save_diffusers(unet, folder / "unet", generator, torch.float32)
    _save_diffusers(vae, folder / "vae", generator, small)
    _save_transformers(text, folder / "text_encoder", generator, small)
    _save_transformers(vision, folder / "vision_encoder", generator, small)
    _write_preprocessors(folder)
    _write_scheduler(folder / "scheduler", version)
    _write_model_index(folder, version)
    if with_controlnet:
        save_random_controlnet(folder / CONTROLNET_SUBFOLDER, unet.config, size, generator)
    return folder


def build_models(size: Literal["tiny", "full"], vocab: dict[str, int]) -> dict[str, torch.nn.Module]:
    """The four networks of a Zero123++ model on the ``meta`` device (shapes and configs, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**_UNET[size]),
            "vae": AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                latent_channels=4,
                scaling_factor=0.18215,
                force_upcast=True,
                **_VAE[size],
            ),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=max(len(vocab), 49408 if size == "full" else 0),
                    max_position_embeddings=77,
                    bos_token_id=vocab[_SPECIAL_TOKENS[0]],
                    eos_token_id=vocab[_SPECIAL_TOKENS[1]],
                    pad_token_id=vocab["!"],
                    **_TEXT[size],
                )
            ),
            "vision_encoder": CLIPVisionModelWithProjection(
                CLIPVisionConfig(image_size=224, layer_norm_eps=1e-5, **_VISION[size])
            ),
        }


def save_random_controlnet(folder: Path, unet_config, size: str, generator: torch.Generator) -> Path:
    """A random ControlNet (diffusers ``ControlNetModel``) matching a UNet config, in the hub layout."""
    from diffusers import ControlNetModel

    params = inspect.signature(ControlNetModel.__init__).parameters
    shared = {k: v for k, v in dict(unet_config).items() if k in params and not k.startswith("_")}
    shared.pop("up_block_types", None)
    with torch.device("meta"):
        controlnet = ControlNetModel(**shared, conditioning_embedding_out_channels=_CONTROL_EMBEDDING[size])
    _save_diffusers(controlnet, folder, generator, torch.float32)
    return folder


def write_clip_tokenizer(folder: Path, source: str | Path | None = None) -> dict[str, int]:
    """Write a CLIP BPE tokenizer (SD2 style: pad token "!", 77 tokens) and return its vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    if source is None:
        vocab, merges = byte_level_clip_vocab()
    else:
        vocab = json.loads((Path(source) / "vocab.json").read_text(encoding="utf-8"))
        merges = [
            line
            for line in (Path(source) / "merges.txt").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#version")
        ]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    special = {"bos_token": _SPECIAL_TOKENS[0], "eos_token": _SPECIAL_TOKENS[1], "unk_token": _SPECIAL_TOKENS[1]}
    special["pad_token"] = "!"
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return vocab


def byte_level_clip_vocab(merges: tuple[str, ...] = ()) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary skeleton: the 256 byte symbols, the same with ``</w>``, the merges, then the two specials.

    Byte symbols follow GPT-2/CLIP's reversible byte-to-unicode map, so "!" gets id 0 as in SD2's tokenizer.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + len(codes) - len(printable))
    symbols = [chr(c) for c in codes]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + list(_SPECIAL_TOKENS)
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, list(merges)


def _random_state_dict(model: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> dict:
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    gains = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, norms)}
    params = dict(model.named_parameters())
    state = {}
    for name, meta in model.state_dict().items():
        if name not in params:
            raise RuntimeError(f"{type(model).__name__} has a persistent buffer {name}; it cannot be drawn at random")
        if name in gains:
            tensor = torch.ones(meta.shape)
        elif meta.dim() >= 2:
            fan_in = math.prod(meta.shape[1:])
            tensor = torch.randn(meta.shape, generator=generator, device=generator.device) / math.sqrt(fan_in)
        else:
            tensor = torch.randn(meta.shape, generator=generator, device=generator.device) * 0.02
        state[name] = tensor.to(dtype).cpu().contiguous()
    return state


def _save_diffusers(model, folder: Path, generator: torch.Generator, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = _random_state_dict(model, generator, dtype)
    save_file(state, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


def _save_transformers(model, folder: Path, generator: torch.Generator, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.dtype = str(dtype).removeprefix("torch.")
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    state = _random_state_dict(model, generator, dtype)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _write_preprocessors(folder: Path) -> None:
    common = {
        "do_convert_rgb": True,
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_processor_type": "CLIPImageProcessor",
    }
    clip = {
        **common,
        "size": {"shortest_edge": 224},
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,  # bicubic
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    vae = {
        **common,
        "size": {"shortest_edge": 512},
        "crop_size": {"height": 512, "width": 512},
        "resample": 2,  # bilinear
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.8, 0.8, 0.8],
    }
    for name, config in (("feature_extractor_clip", clip), ("feature_extractor_vae", vae)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def _write_scheduler(folder: Path, version: str) -> None:
    config = {
        "_class_name": "EulerAncestralDiscreteScheduler",
        "_diffusers_version": "0.24.0" if version == "v1.2" else "0.17.1",
        "beta_end": 0.012,
        "beta_schedule": "linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }
    if version == "v1.2":  # v1.1's file has no such key; it defaults to "linspace" as well
        config["timestep_spacing"] = "linspace"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _write_model_index(folder: Path, version: str) -> None:
    ramp = list(RAMP_V12) if version == "v1.2" else [*RAMP_V11_HEAD, *RAMP_V12[len(RAMP_V11_HEAD) :]]
    index = {
        "_class_name": "Zero123PlusPipeline",
        "_diffusers_version": "0.24.0" if version == "v1.2" else "0.17.1",
        "_name_or_path": "sudo-ai/zero123plus-v1.1",
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "ramping_coefficients": ramp,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
