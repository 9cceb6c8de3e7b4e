"""Configuration of ``img2mesh train-data`` (meshes → training pairs) and ``img2mesh train`` (the fine-tune)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from img2mesh.zero123pp.weights import DEFAULT_MODEL
from recon.config import ConfigValueError, check, check_range


@dataclass
class TrainDataConfig:
    """How meshes are rendered into condition images and target grids."""

    poses: Literal["v1.2", "v1.1"] = "v1.2"
    """Pose table of the target grids; it must be the one of the model you fine-tune."""
    conditions: int = 8
    """Condition images (each with its own target grid) per mesh, from random viewpoints."""
    elevation_min: float = -20.0
    """Lowest elevation of a condition view, degrees (InstantMesh's range; photos are rarely taken from below)."""
    elevation_max: float = 45.0
    """Highest elevation of a condition view, degrees (above ~45° the object's sides, which the targets show,
    are hardly seen)."""
    view_size: int = 320
    """Side of each of the six target views in pixels; Zero123++ works at 320 (smaller sizes are for tests and
    quick experiments), a multiple of 64."""
    condition_size: int = 512
    """Side of the square condition cut-out in pixels (what ``img2mesh run`` feeds the model)."""
    object_share: float = 0.85
    """Share of the condition image's side taken by the object, as ``preprocess.object_share`` at inference."""
    lighting: Literal["lit", "unlit"] = "lit"
    """"lit": albedo shaded by one fixed light (shape cues, as photos have); "unlit": flat albedo (hand-painted
    styles). A condition and its targets share the light."""
    up: Literal["y", "z"] = "y"
    """Up axis of OBJ and PLY files (glTF is always +Y up)."""
    supersample: int = 2
    """Render at this multiple of the size and box-filter (anti-aliased silhouettes)."""
    seed: int = 0
    """Seed of the condition viewpoints (each mesh draws its own from it and its name, so reruns agree)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Device of the renderer; "auto" takes CUDA when present."""

    def validate(self) -> None:
        """Raise :class:`~recon.config.ConfigValueError` for the first value that cannot work."""
        check_range("conditions", self.conditions, 1)
        check(self.view_size >= 64 and self.view_size % 64 == 0, "view_size", self.view_size, "use a multiple of 64")
        check_range("condition_size", self.condition_size, 16, 4096)
        check_range("elevation_min", self.elevation_min, -90.0, 90.0)
        check_range("elevation_max", self.elevation_max, self.elevation_min, 90.0)
        check(0 < self.object_share <= 1, "object_share", self.object_share, "use a share in (0, 1], e.g. 0.85")
        check_range("supersample", self.supersample, 1, 8)


@dataclass
class TrainConfig:
    """How Zero123++ is fine-tuned (v-prediction MSE under its linear noise schedule, as at inference)."""

    model: str = DEFAULT_MODEL
    """Base weights: a Hugging Face hub id or a local folder with the zero123plus layout."""
    revision: str | None = None
    """Hub revision of ``model``; None takes the default branch."""
    mode: Literal["lora", "full"] = "lora"
    """"lora": a low-rank adapter on the UNet's attention projections (small, fits a 24 GB card); "full": every
    UNet weight (the InstantMesh recipe)."""
    lora_rank: int = 64
    """Rank of the adapter (Zero123++'s author: LoRA "barely works" at rank 4, works from about 64)."""
    lora_alpha: float | None = None
    """Adapter scale numerator (the update is alpha / rank · BA); None makes it equal to the rank."""
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 4
    """Training pairs per step and process (with several GPUs, per GPU)."""
    learning_rate: float | None = None
    """Peak learning rate of AdamW; None is 1e-4 for LoRA and 1e-5 for full (InstantMesh)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    restart_steps: int = 1000
    """Steps of each cosine cycle of the learning rate (warm restarts, stepped every optimiser step)."""
    grad_clip: float = 1.0
    """Largest gradient norm; larger gradients are scaled down to it."""
    cfg_dropout: float = 0.1
    """Share of the pairs trained unconditionally (the empty prompt and the gray reference image of classifier-free
    guidance), drawn per pair."""
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """bf16 autocast ("auto": on CUDA; the CPU trains in fp32)."""
    cache_encodings: bool = True
    """Keep each pair's frozen encodings (VAE posteriors of condition and target, prompt embedding) in host memory
    after its first step: they are the same at every epoch (about 0.4 MB per pair at the default sizes)."""
    gradient_checkpointing: bool = True
    """Recompute the UNet's blocks in the backward pass instead of storing their activations (less memory, ~30 %
    more time)."""
    cuda_graphs: bool = True
    """Replay each step's forward and backward pass from a CUDA graph captured at the third step (on one CUDA
    process; with several, or off CUDA, eager). Same draws and kernels as eager, without the launch overhead that
    otherwise leaves the GPU idle."""
    checkpoint_every: int = 500
    """Save the training state (for ``--resume``) every this many steps, and at the end."""
    keep_checkpoints: int = 2
    """Training states kept (the oldest are deleted)."""
    validate_every: int = 500
    """Sample the validation grids every this many steps, and at the end; 0 never."""
    validation_meshes: int = 1
    """Meshes of the data held out of training; their first condition image is sampled at each validation (0:
    validate on the first training mesh)."""
    validation_steps: int = 28
    """Denoising steps of a validation sample."""
    validation_guidance: float = 4.0
    """Classifier-free guidance of a validation sample."""
    workers: int = 2
    """Processes that read and decode training pairs ahead of the step (0: in the training process)."""
    seed: int = 0
    """Seed of the data order, the noise and the dropout (a resumed run draws what the uninterrupted one would)."""

    def validate(self) -> None:
        """Raise :class:`~recon.config.ConfigValueError` for the first value that cannot work."""
        for key in ("steps", "batch_size", "lora_rank", "restart_steps", "checkpoint_every", "keep_checkpoints"):
            check_range(key, getattr(self, key), 1)
        for key in ("validate_every", "validation_meshes", "workers"):
            check_range(key, getattr(self, key), 0)
        check_range("validation_steps", self.validation_steps, 1, 1000)
        if self.learning_rate is not None:
            check(self.learning_rate > 0, "learning_rate", self.learning_rate, "use a positive rate, e.g. 1e-4")
        check(0 <= self.cfg_dropout < 1, "cfg_dropout", self.cfg_dropout, "use a share in [0, 1), e.g. 0.1")
        check(self.grad_clip > 0, "grad_clip", self.grad_clip, "use a positive norm, e.g. 1.0")


def read_yaml_mapping(path: str | Path | None) -> dict[str, Any]:
    """The keys of a YAML config file (empty for None), or one sentence saying what is wrong with it."""
    import yaml

    from img2mesh.errors import InputError

    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InputError(f"Cannot read the config {path} ({exc.strerror}); check the path.") from None
    except yaml.YAMLError as exc:
        raise InputError(f"Config {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
    if not isinstance(data, dict):
        raise InputError(f"Config {path} must be a mapping of keys to values (steps: 1000, ...).")
    return data


def load_train_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then a YAML file of :class:`TrainConfig` keys, then ``overrides`` (options given on the CLI)."""
    return _load(TrainConfig, path, overrides)


def load_data_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainDataConfig:
    """Defaults, then a YAML file of :class:`TrainDataConfig` keys, then ``overrides``."""
    return _load(TrainDataConfig, path, overrides)


def _load(cls: type, path: str | Path | None, overrides: dict[str, Any]):
    from img2mesh.config import build_dataclass
    from img2mesh.errors import InputError

    data = read_yaml_mapping(path)

    def source(key: str) -> str:
        return "the command line" if key in overrides else str(path)

    config = build_dataclass(cls, {**data, **overrides}, source, prefix="")
    try:
        config.validate()
    except ConfigValueError as exc:
        raise InputError(f"Config key {exc.key!r} is {exc.value!r} (set by {source(exc.key)}); {exc.fix}.") from None
    return config
