"""Fine-tuning Zero123++ on training pairs (``img2mesh train``): the InstantMesh recipe on our own pipeline.

The loss is the one the model was trained with: v-prediction MSE on the target grid's latents, noised under the
model's own linear schedule (β 0.00085 → 0.012, 1000 steps, a DDPM scheduler built from its scheduler config).
Everything that conditions the UNet is the pipeline's code, run as at inference: :meth:`condition_posteriors` (the
VAE posterior that ``encode_condition`` samples the reference latent from), :meth:`encode_prompt` (FlexDiffuse:
the empty prompt plus the ramp times the CLIP image embedding) and the pipeline's :class:`ReferenceUNet` (reference
pass on the condition latent noised to the same timestep with fresh noise, then the main pass attending to it).
Classifier-free dropout replaces, per pair, both with what guidance contrasts against at inference: the empty
prompt and the gray image's latent (InstantMesh encodes black there and drops whole batches). The frozen encoders'
output of a pair (posteriors and prompt) is the same at every epoch, so it is kept in host memory after the pair's
first step (``cache_encodings``); the latents are still drawn from the posteriors at every step.

Gradient checkpointing re-runs the UNet's blocks in the backward pass. The reference keys and values live in the
pipeline's :class:`ReferenceBank` and a block behaves by the bank's mode, so training sets ``bank.retain`` (keep
the keys and values until the step is done, read without consuming them) and re-runs every block in the mode it
first ran in (:func:`bank_checkpoint`). On one CUDA process the forward and backward pass of a step is captured as
a CUDA graph at the third step and replayed from then on (:mod:`img2mesh.train.graph`): eager, launching its
kernels from Python takes longer than running them.

Randomness is a function of (seed, step, process): the data order, the noise, the timesteps and the dropout of a
step do not depend on earlier steps, so ``--resume`` from a checkpoint continues the loss curve of the
uninterrupted run exactly (on the same hardware). Several GPUs: ``accelerate launch`` runs one process per GPU;
:class:`~accelerate.Accelerator` wraps the denoiser in DistributedDataParallel, each process takes its share of a
step's pairs, and only the main process writes.

Output folder (RUN/): ``train.yaml`` (the config), ``log.csv`` (step, loss, learning rate, seconds),
``checkpoints/step-NNNNNN/state.pt`` (trainable weights, optimiser, schedule), ``validation/step-NNNNNN.png`` (per
held-out mesh: condition | sampled grid | target grid), ``adapter/`` (LoRA, updated at every checkpoint) or
``model/`` (full fine-tune: the new UNet plus links to the base model's other components), ``run.json`` and
``NOTICE.txt`` (the base model and its licence: a fine-tune of CC-BY-NC-4.0 weights is a derivative).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from img2mesh.errors import InputError
from img2mesh.train.config import TrainConfig
from img2mesh.train.data import PairDataset, read_index

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOG = "log.csv"
NOTICE = """\
This fine-tune is a derivative of {model} (revision {revision}).
The Zero123++ weights are licensed CC-BY-NC-4.0 (https://creativecommons.org/licenses/by-nc/4.0/) by SUDO AI:
non-commercial use only, with attribution; their UNet derives from Stable Diffusion 2, whose CreativeML Open
RAIL++-M use restrictions apply too. This adapter or model carries those terms. Changes: fine-tuned with
img2mesh train ({mode}, {steps} steps) on the training data listed in run.json.
"""


def step_seed(seed: int, step: int, process: int) -> int:
    """The seed of one step's draws on one process (independent of every other step)."""
    return int(np.random.SeedSequence([seed, step, process]).generate_state(1)[0])


class StepBatches:
    """Batch sampler: for steps ``start..end-1``, this process's share of each step's pairs (a fresh seeded
    permutation of the data per epoch, so any step's batch is known without replaying the earlier ones)."""

    def __init__(self, size: int, batch: int, processes: int, process: int, seed: int, start: int, end: int):
        self.size, self.batch, self.processes, self.process = size, batch, processes, process
        self.seed, self.start, self.end = seed, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        orders: dict[int, np.ndarray] = {}
        for step in range(self.start, self.end):
            first = (step * self.processes + self.process) * self.batch
            batch = []
            for position in range(first, first + self.batch):
                epoch, offset = divmod(position, self.size)
                if epoch not in orders:
                    orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.size)}
                batch.append(int(orders[epoch][offset]))
            yield batch


def bank_checkpoint(bank):
    """A gradient-checkpointing function for diffusers that re-runs a block in the reference bank's mode of its
    first run (the bank's mode is "off" by the time the backward pass re-runs it)."""
    import torch.utils.checkpoint

    def checkpoint(module, *args):
        mode = bank.mode

        @contextlib.contextmanager
        def first_run_mode():
            previous, bank.mode = bank.mode, mode
            try:
                yield
            finally:
                bank.mode = previous

        # The UNet draws no random numbers (its dropouts are 0), so there is no RNG state to save and restore
        # (reading the CUDA generator's state is also not allowed while a CUDA graph is being captured).
        return torch.utils.checkpoint.checkpoint(
            module.__call__,
            *args,
            use_reentrant=False,
            preserve_rng_state=False,
            context_fn=lambda: (contextlib.nullcontext(), first_run_mode()),
        )

    return checkpoint


@dataclasses.dataclass
class Encodings:
    """What the frozen encoders make of a batch of pairs (the same at every epoch, so it can be kept)."""

    condition: Any
    """VAE posterior parameters of the condition images, (B, 8, h, w): the reference pass's latent is drawn from it."""
    prompt: Any
    """FlexDiffuse prompt embeddings of the condition images (empty prompt + ramp · CLIP image embedding)."""
    target: Any
    """VAE posterior parameters of the target grids (in Zero123++'s image space), (B, 8, H/8, W/8)."""


@dataclasses.dataclass
class Unconditional:
    """What classifier-free guidance contrasts with at inference (one of each, broadcast over the batch)."""

    gray: Any
    """VAE posterior parameters of the gray image, (1, 8, h, w)."""
    prompt: Any
    """The empty prompt's embedding, (1, 77, D)."""


def encode_pairs(pipe, conditions, targets) -> Encodings:
    """The pipeline's own encoders on a batch: conditions (RGB PIL images), targets ((B, 3, H, W) in [-1, 1])."""
    import torch

    from img2mesh.zero123pp.pipeline import scale_image

    device = pipe.unet.device
    with torch.no_grad():
        posterior, _ = pipe.condition_posteriors(conditions, False, device)
        prompt = pipe.encode_prompt(conditions, False, True, device=device)
        pixels = scale_image(targets.to(device=device, dtype=pipe.vae.dtype))
        target = pipe.vae.encode(pixels).latent_dist.parameters
    return Encodings(posterior.parameters, prompt, target)


def unconditional(pipe, condition) -> Unconditional:
    """The gray image's posterior and the empty prompt, through the pipeline's code (``condition``: any image)."""
    import torch

    device = pipe.unet.device
    with torch.no_grad():
        _, gray = pipe.condition_posteriors([condition], True, device)
        return Unconditional(gray.parameters, pipe.empty_prompt_embeds(device))


class StepInputs(NamedTuple):
    """What the denoiser and the loss of one step take, all drawn before the UNet runs (device tensors)."""

    noisy: Any
    """Target latents noised to ``timesteps``."""
    timesteps: Any
    """One timestep per pair."""
    prompt: Any
    """Prompt embeddings (the empty prompt where the pair is dropped)."""
    reference: Any
    """Condition latents (the gray image's where dropped), noised to the same timesteps."""
    velocity: Any
    """The scheduler's velocity: what the denoiser should predict."""


def step_inputs(pipe, noise_scheduler, encodings: Encodings, uncond: Unconditional, generator, dropout) -> StepInputs:
    """A batch's random draws: latents from the posteriors, the pair replaced by the unconditional input with
    probability ``dropout``, noise and timesteps; and the velocity to predict."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.utils.torch_utils import randn_tensor

    from img2mesh.zero123pp.pipeline import scale_latents

    device = pipe.unet.device
    batch = encodings.prompt.shape[0]
    cond_lat = DiagonalGaussianDistribution(encodings.condition).sample(generator=generator)
    gray_lat = DiagonalGaussianDistribution(uncond.gray.expand_as(encodings.condition)).sample(generator=generator)
    latents = DiagonalGaussianDistribution(encodings.target).sample(generator=generator)
    latents = scale_latents(latents * pipe.vae.config.scaling_factor).float()
    drop = torch.rand(batch, generator=generator).to(device) < dropout
    cond_lat = torch.where(drop[:, None, None, None], gray_lat, cond_lat).float()
    prompt = torch.where(drop[:, None, None], uncond.prompt, encodings.prompt)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
    timesteps = timesteps.to(device)
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    reference = noise_scheduler.add_noise(cond_lat, pipe.reference_noise(cond_lat, generator), timesteps)
    velocity = noise_scheduler.get_velocity(latents, noise, timesteps)
    return StepInputs(noisy, timesteps, prompt, reference, velocity)


def velocity_loss(denoiser, inputs: StepInputs):
    """The v-prediction MSE: the denoiser's v (reference pass, then main pass) against the scheduler's velocity."""
    import torch.nn.functional as F

    prediction = denoiser(inputs.noisy, inputs.timesteps, inputs.prompt, inputs.reference)
    return F.mse_loss(prediction.float(), inputs.velocity.float())


@dataclasses.dataclass
class Split:
    """Training and validation pairs of a data folder, split by mesh."""

    train: list
    """Pairs trained on."""
    validation: list
    """First pair of each held-out mesh (or of the first training mesh when none is held out)."""
    held_out: list[str]
    """Names of the held-out meshes."""
    settings: dict[str, Any]
    """The data's render settings (index.json)."""


def split_data(folder: Path, config: TrainConfig) -> Split:
    """Read and check a train-data folder and hold out the last ``validation_meshes`` meshes (by name)."""
    settings, meshes = read_index(folder)
    held = config.validation_meshes
    if held >= len(meshes):
        raise InputError(
            f"{folder} has {len(meshes)} mesh(es), so holding out {held} for validation leaves none to train on; "
            "set validation_meshes lower or render more meshes."
        )
    train_meshes, val_meshes = meshes[: len(meshes) - held], meshes[len(meshes) - held :]
    train = [pair for _, pairs in train_meshes for pair in pairs]
    validation = [pairs[0] for _, pairs in (val_meshes or train_meshes[:1])]
    return Split(train, validation, [name for name, _ in val_meshes], settings)


class Trainer:
    """One fine-tuning run: build with the data, output folder and config, then :meth:`run`."""

    def __init__(self, data: Path, out: Path, config: TrainConfig, resume: bool = False, progress: bool = True):
        from img2mesh.zero123pp.weights import resolve_model

        self.config, self.data, self.out, self.progress = config, Path(data), Path(out), progress
        self.split = split_data(self.data, config)  # a bad data folder fails before any model loads
        self.start = self._check_out_folder(resume)
        self.model_folder = resolve_model(config.model, config.revision)

    # ------------------------------------------------------------------------------------------ set-up

    def _check_out_folder(self, resume: bool) -> int:
        """The step to start at (0, or the last checkpoint's with ``resume``)."""
        latest = latest_checkpoint(self.out)
        if resume:
            if latest is None:
                raise InputError(f"{self.out} has no checkpoint to resume from; start the run without --resume.")
            return latest[0]
        if self.out.exists() and any(self.out.iterdir()):
            raise InputError(
                f"{self.out} is not empty; pass --resume to continue the run in it, or choose a new folder."
            )
        return 0

    def setup(self) -> None:
        """Load the model, make the UNet trainable (adapter or full), the optimiser, and restore a checkpoint."""
        import torch
        from accelerate import Accelerator
        from diffusers import DDPMScheduler

        from img2mesh.train.graph import GraphedBackward
        from img2mesh.train.lora import add_lora, keep_input_dtype
        from img2mesh.zero123pp import Zero123PlusPipeline

        config = self.config
        precision = config.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = accelerator = Accelerator(mixed_precision=precision)
        frozen_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        pipe = Zero123PlusPipeline.from_pretrained(self.model_folder, torch_dtype=frozen_dtype)
        if pipe.config.version != self.split.settings["poses"]:
            raise InputError(
                f"The training data was rendered at the {self.split.settings['poses']} poses but {config.model} is "
                f"Zero123++ {pipe.config.version}; render the data with --poses {pipe.config.version}."
            )
        pipe.set_progress_bar_config(disable=True)
        pipe.to(accelerator.device)
        for module in (pipe.vae, pipe.text_encoder, pipe.vision_encoder, pipe.unet):
            module.requires_grad_(False)
        unet = pipe.unet
        if config.mode == "lora":
            with torch.random.fork_rng(devices=[]):  # the adapter's initial weights follow the seed
                torch.manual_seed(config.seed)
                add_lora(unet, config.lora_rank, config.lora_alpha)
            params = [p for p in unet.parameters() if p.requires_grad]
            for p in params:  # the adapter trains in fp32 over the frozen (bf16) base
                p.data = p.data.float()
            keep_input_dtype(unet)
        else:
            unet.float().requires_grad_(True)
            params = list(unet.parameters())
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing(bank_checkpoint(pipe.denoiser.bank))
        unet.train()
        lr = config.learning_rate or (1e-4 if config.mode == "lora" else 1e-5)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        self.lr_schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.restart_steps)
        self.denoiser, self.optimizer = accelerator.prepare(pipe.denoiser, optimizer)
        self.pipe, self.params = pipe, params
        self.uncond: Unconditional | None = None
        self.cache: dict[int, tuple] = {}
        """Training pair index → its encodings (condition posterior, prompt, target posterior) on the CPU."""
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.graphed: GraphedBackward | None = None
        """The forward and backward pass replayed from a CUDA graph (one CUDA process, ``cuda_graphs``)."""
        if config.cuda_graphs and accelerator.device.type == "cuda" and accelerator.num_processes == 1:
            self.graphed = GraphedBackward(self.backward)
        if self.start:
            self._restore(self.out / CHECKPOINTS / f"step-{self.start:06d}" / "state.pt")

    # ------------------------------------------------------------------------------------------ the loop

    def run(self) -> list[float]:
        """Train from the start step to ``config.steps``; returns the losses of the steps run here."""
        import torch
        from tqdm.auto import tqdm

        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            self._write_run_files()
        loader = self._loader()
        losses: list[float] = []
        bar = tqdm(
            total=config.steps, initial=self.start, desc="training", unit="step",
            disable=not (self.progress and accelerator.is_main_process),
        )  # fmt: skip
        started = time.perf_counter()
        for step, (indices, conditions, targets) in zip(range(self.start, config.steps), loader, strict=False):
            generator = torch.Generator().manual_seed(step_seed(config.seed, step, accelerator.process_index))
            inputs = self.inputs(conditions, targets, generator, config.cfg_dropout, indices)
            loss = self.graphed(*inputs) if self.graphed is not None else self.backward(*inputs)
            accelerator.clip_grad_norm_(self.params, config.grad_clip)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=self.graphed is None)  # a graph adds into the .grad it knows
            self.lr_schedule.step()
            value = accelerator.reduce(loss.detach(), "mean").item()
            losses.append(value)
            done = step + 1
            if accelerator.is_main_process:
                self._log(done, value, lr, time.perf_counter() - started)
            bar.set_postfix(loss=f"{value:.4f}")
            bar.update()
            if done % config.checkpoint_every == 0 or done == config.steps:
                self.save_checkpoint(done)
            if config.validate_every and (done % config.validate_every == 0 or done == config.steps):
                self.validate(done)
        bar.close()
        accelerator.wait_for_everyone()
        return losses

    def loss(self, conditions, targets, generator, dropout: float, indices: list[int] | None = None):
        """The training loss of a batch of pairs (``indices`` into the training pairs let their encodings be kept)."""
        return velocity_loss(self.denoiser, self.inputs(conditions, targets, generator, dropout, indices))

    def inputs(self, conditions, targets, generator, dropout: float, indices: list[int] | None = None) -> StepInputs:
        """A batch's encodings and random draws (:func:`step_inputs`)."""
        if self.uncond is None:
            self.uncond = unconditional(self.pipe, conditions[0])
        encodings = self.encodings(conditions, targets, indices)
        return step_inputs(self.pipe, self.noise_scheduler, encodings, self.uncond, generator, dropout)

    def backward(self, *inputs):
        """The loss of a step's inputs and its gradients, added into the trainable parameters' ``.grad``; returns
        the loss, detached. The reference keys and values are kept for the recomputation and dropped after."""
        bank = self.pipe.denoiser.bank
        bank.retain = self.config.gradient_checkpointing
        try:
            with self._attention_kernels():
                loss = velocity_loss(self.denoiser, StepInputs(*inputs))
                self.accelerator.backward(loss)
        finally:
            bank.retain = False
            bank.clear()
        return loss.detach()

    def _attention_kernels(self):
        """Graphed, attention runs on the FlashAttention and memory-efficient kernels, not cuDNN's: cuDNN's has had
        capture bugs at long non-causal sequences like the reference attention's (PyTorch and TransformerEngine
        turn it off for CUDA graphs there on some cuDNN versions)."""
        if self.graphed is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def encodings(self, conditions, targets, indices: list[int] | None) -> Encodings:
        """The batch's encodings: kept ones from host memory (``cache_encodings``), the others encoded now."""
        import torch

        if indices is None or not self.config.cache_encodings:
            return encode_pairs(self.pipe, conditions, targets)
        new = [i for i, index in enumerate(indices) if index not in self.cache]
        if new:
            fresh = encode_pairs(self.pipe, [conditions[i] for i in new], targets[new])
            for j, i in enumerate(new):
                self.cache[indices[i]] = (fresh.condition[j].cpu(), fresh.prompt[j].cpu(), fresh.target[j].cpu())
        device = self.pipe.unet.device
        parts = zip(*(self.cache[index] for index in indices), strict=True)
        return Encodings(*(torch.stack(part).to(device, non_blocking=True) for part in parts))

    def _loader(self):
        from torch.utils.data import DataLoader

        from img2mesh.train.data import collate_pairs

        config, accelerator = self.config, self.accelerator
        size = self.split.settings["view_size"]
        dataset = PairDataset(self.split.train, (3 * size, 2 * size))
        batches = StepBatches(
            len(dataset), config.batch_size, accelerator.num_processes, accelerator.process_index,
            config.seed, self.start, config.steps,
        )  # fmt: skip
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_pairs, num_workers=config.workers)

    # ------------------------------------------------------------------------------------------ outputs

    def trainable_state(self) -> dict[str, Any]:
        """The trained weights by parameter name (the adapter's, or the whole UNet's)."""
        unet = self.pipe.unet
        return {n: p.detach().cpu() for n, p in unet.named_parameters() if p.requires_grad}

    def save_checkpoint(self, step: int) -> None:
        """Training state for ``--resume`` (the last ``keep_checkpoints`` are kept) and the exported weights."""
        import torch

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            folder = self.out / CHECKPOINTS / f"step-{step:06d}"
            partial = folder.with_name(folder.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            state = {
                "step": step,
                "trainable": self.trainable_state(),
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
            }
            torch.save(state, partial / "state.pt")
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
            for old in sorted((self.out / CHECKPOINTS).glob("step-??????"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
            self.export()
        accelerator.wait_for_everyone()

    def _restore(self, path: Path) -> None:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        named = dict(self.pipe.unet.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        _truncate_log(self.out / LOG, self.start)

    def export(self) -> Path:
        """Write the trained weights where ``--lora RUN/`` (adapter/) or ``--model RUN/model`` finds them."""
        from img2mesh.train.lora import ADAPTER_DIR, save_lora

        if self.config.mode == "lora":
            return save_lora(self.pipe.unet, self.out / ADAPTER_DIR)
        model = self.out / "model"
        model.mkdir(parents=True, exist_ok=True)
        for item in self.model_folder.iterdir():
            link = model / item.name
            if item.name != "unet" and not link.exists():
                link.symlink_to(item.resolve())
        self.pipe.unet.save_pretrained(model / "unet")
        return model

    def validate(self, step: int) -> Path | None:
        """Sample the validation conditions and save condition | sample | target rows as one PNG."""
        import torch
        from PIL import Image

        from img2mesh.zero123pp.pipeline import GRID_HEIGHT, GRID_WIDTH, composite_on_gray
        from recon.posed_views import BACKGROUND_GRAY

        gray = (BACKGROUND_GRAY,) * 3

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        path = None
        if accelerator.is_main_process:
            rows = []
            unet = self.pipe.unet
            unet.eval()
            with accelerator.autocast():
                for index, pair in enumerate(self.split.validation):
                    condition = Image.open(pair.condition).convert("RGBA")
                    generator = torch.Generator().manual_seed(self.config.seed + index)
                    sample = self.pipe(
                        composite_on_gray(condition),
                        num_inference_steps=self.config.validation_steps,
                        guidance_scale=self.config.validation_guidance,
                        generator=generator,
                    ).images[0]
                    target = Image.open(pair.target).convert("RGB").resize((GRID_WIDTH, GRID_HEIGHT))
                    row = Image.new("RGB", (3 * GRID_WIDTH, GRID_HEIGHT), gray)
                    row.paste(composite_on_gray(condition).resize((GRID_WIDTH, GRID_WIDTH)), (0, 0))
                    row.paste(sample, (GRID_WIDTH, 0))
                    row.paste(target, (2 * GRID_WIDTH, 0))
                    rows.append(row)
            unet.train()
            sheet = Image.new("RGB", (3 * GRID_WIDTH, GRID_HEIGHT * len(rows)), gray)
            for index, row in enumerate(rows):
                sheet.paste(row, (0, index * GRID_HEIGHT))
            path = self.out / "validation" / f"step-{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            sheet.save(path)
        accelerator.wait_for_everyone()
        return path

    def _log(self, step: int, loss: float, lr: float, seconds: float) -> None:
        path = self.out / LOG
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "loss", "lr", "seconds"])
            writer.writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{seconds:.2f}"])

    def _write_run_files(self) -> None:
        import yaml

        from img2mesh.run_record import cache_commit

        self.out.mkdir(parents=True, exist_ok=True)
        config = dataclasses.asdict(self.config)
        (self.out / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        record = {
            "base_model": {
                "id": self.config.model,
                "revision": self.config.revision,
                "commit": cache_commit(self.model_folder),
                "version": self.pipe.config.version,
                "license": "CC-BY-NC-4.0 (a fine-tune is a derivative)",
            },
            "mode": self.config.mode,
            "processes": self.accelerator.num_processes,
            "pairs_per_step": self.config.batch_size * self.accelerator.num_processes,
            "data": {
                "folder": str(self.data.resolve()),
                "settings": self.split.settings,
                "index_sha256": _sha256(self.data / "index.json"),
                "held_out": self.split.held_out,
                "training_pairs": len(self.split.train),
            },
            "config": config,
        }
        (self.out / "run.json").write_text(json.dumps(record, indent=1))
        notice = NOTICE.format(
            model=self.config.model,
            revision=record["base_model"]["commit"] or self.config.revision or "default",
            mode=self.config.mode,
            steps=self.config.steps,
        )
        (self.out / "NOTICE.txt").write_text(notice)


def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint of a run folder, or None."""
    folders = sorted((out / CHECKPOINTS).glob("step-??????")) if (out / CHECKPOINTS).is_dir() else []
    folders = [f for f in folders if (f / "state.pt").is_file()]
    return (int(folders[-1].name.removeprefix("step-")), folders[-1]) if folders else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log rows after ``step`` (a resumed run rewrites them)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [lines[0]] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
    path.write_text("".join(kept))


def _sha256(path: Path) -> str:
    from img2mesh.train.data import file_digest

    return file_digest(path)


def train(data: Path, out: Path, config: TrainConfig, resume: bool = False, progress: bool = True) -> Trainer:
    """Fine-tune per ``config`` on the train-data folder ``data``, writing the run into ``out``."""
    trainer = Trainer(data, out, config, resume=resume, progress=progress)
    trainer.setup()
    trainer.run()
    return trainer
