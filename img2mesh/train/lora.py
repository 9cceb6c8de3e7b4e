"""LoRA adapters of the Zero123++ UNet: added for training, saved, and loaded back into a pipeline (``--lora``).

The adapter is peft's LoRA on the query, key, value and output projections of every attention layer (self- and
cross-attention; one UNet serves the reference and the main pass, so both passes are adapted). peft starts the
up-projection at zero, so a fresh adapter changes nothing: the pipeline's output stays bit-identical.

Loading for inference merges by default: ``W ← W + (alpha / rank) · B·A`` once, rounded to the model's dtype, and
the peft layers are removed, so the UNet is plain diffusers again and the fast path (stacked projections, CUDA
graphs, compiled blocks) runs at the base model's speed and memory. Merging changes rounding, not the maths: a
merged adapter's output is not bit-identical to the same adapter run unmerged (``x·W + s·(x·A)·B`` per step), but
a zero adapter merges to exactly ``W``. Unmerged (``multiview.lora_merge: false``) the adapter stays a separate
branch and the step runs eagerly (the fast path reads the projection weights directly and would skip it).

A run folder holds ``adapter/`` (``adapter_config.json``, ``adapter_model.safetensors``) for a LoRA run and
``model/`` (a complete model folder) for a full fine-tune.
"""

from __future__ import annotations

import json
from pathlib import Path

from img2mesh.errors import InputError

#: The UNet modules that get an adapter: every attention layer's projections.
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
INSTALL_HINT = "LoRA needs peft; install it with `pip install 'img2mesh[train]'`."


def _peft():
    try:
        import peft
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return peft


def add_lora(unet, rank: int, alpha: float | None = None) -> None:
    """Give the UNet a fresh (zero-effect) LoRA adapter of ``rank`` on its attention projections."""
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(TARGET_MODULES))
    unet.add_adapter(config)


def keep_input_dtype(unet) -> None:
    """Let the adapter layers take their input in its own dtype. Under bf16 autocast peft's cast of the bf16
    activations to the fp32 adapter weights' dtype is undone by autocast before the GEMM: two copies per projection
    and pass (and two more in the backward pass) that change no bit of the result."""
    for module in unet.modules():
        if hasattr(module, "cast_input_dtype_enabled"):  # peft's tuner layers (peft >= 0.14)
            module.cast_input_dtype_enabled = False


def save_lora(unet, folder: Path) -> Path:
    """Write the UNet's adapter (weights in fp32 and its peft config) into ``folder``; returns ``folder``."""
    from safetensors.torch import save_file

    peft = _peft()
    folder.mkdir(parents=True, exist_ok=True)
    state = peft.get_peft_model_state_dict(unet)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, folder / ADAPTER_WEIGHTS)
    unet.peft_config["default"].save_pretrained(str(folder))
    return folder


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder of a run folder (``RUN/adapter``) or an adapter folder itself, checked."""
    path = Path(path).expanduser()
    for folder in (path / ADAPTER_DIR, path):
        if (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_CONFIG).is_file():
            return folder
    if (path / "model" / "model_index.json").is_file():
        raise InputError(f"{path} holds a full fine-tune, not a LoRA; pass --model {path / 'model'} instead.")
    if not path.exists():
        raise InputError(f"LoRA {path} does not exist; pass the output folder of `img2mesh train`.")
    raise InputError(
        f"{path} holds no LoRA adapter ({ADAPTER_DIR}/{ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}); pass the output "
        "folder of `img2mesh train` (a run that has saved a checkpoint)."
    )


def load_lora(unet, path: str | Path, merge: bool = True) -> None:
    """Load a saved adapter into the UNet; ``merge`` folds it into the weights and removes the peft layers."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    peft = _peft()
    folder = adapter_folder(path)
    try:
        config = peft.LoraConfig.from_pretrained(str(folder))
        state = load_file(folder / ADAPTER_WEIGHTS)
    except (json.JSONDecodeError, SafetensorError, OSError, TypeError, ValueError) as exc:
        raise InputError(f"The LoRA in {folder} is damaged ({type(exc).__name__}); copy or train it again.") from None
    unet.add_adapter(config)
    result = peft.set_peft_model_state_dict(unet, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    lora_params = {n for n, _ in unet.named_parameters() if "lora_" in n}
    loaded = {k.replace(".weight", ".default.weight") for k in state}
    if unexpected or not lora_params <= loaded:
        unet.unload_lora()
        raise InputError(
            f"The LoRA in {folder} does not fit this UNet (trained on another architecture); use the base model "
            "it was trained on (see its run.json)."
        )
    if merge:
        unet.fuse_lora()
        unet.unload_lora()
