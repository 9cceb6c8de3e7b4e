"""Zero123++: one image in, six views of the object around it out, as a grid 640 wide x 960 tall (3 rows x 2 columns).

Our own implementation of SUDO AI's public pipeline (the ``pipeline.py`` of their model repositories) on plain
diffusers/transformers building blocks. It loads the public repository layout (``sudo-ai/zero123plus-v1.2``,
``-v1.1``) component by component with known classes and never runs code from a model repository.

Fidelity is a requirement: with the same weights and dtype, the global torch seed set and no generator, the output
equals the reference pipeline's. That fixes more than the maths, it fixes the order of random draws:

1. the VAE posterior sample of the condition image, 2. the posterior sample of the gray (zero) image (CFG only),
3. the initial latents, 4. per step: the fresh noise of the reference latent, then the sampler's noise.

Without a generator every draw comes from the global RNG, as in the reference. With a generator every draw comes
from it, in the same order, so a generator alone makes a run reproducible, and a CPU generator gives the same noise
on every device. (The reference takes draws 1, 2 and the reference noise from the global RNG even when a generator is
passed; we do not copy that quirk, it makes generator-seeded runs irreproducible.) A list of generators, one per
input image, makes each image's draws come from its own generator, so a batch gives the images of the single runs.

Per step the UNet runs twice (:class:`~img2mesh.zero123pp.attention.ReferenceUNet`): the reference pass on the
condition latent noised to the current timestep, and the main pass whose self-attention also sees the reference
tokens. Global conditioning is FlexDiffuse: the CLIP image embedding times 77 learned ramp coefficients added to the
empty-prompt embedding. Classifier-free guidance contrasts that with the plain empty-prompt embedding attending to
the gray image's latent.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from img2mesh.errors import InputError
from img2mesh.zero123pp.attention import ReferenceUNet
from img2mesh.zero123pp.schedulers import SchedulerName, TimestepSpacing, make_scheduler
from img2mesh.zero123pp.weights import DEFAULT_MODEL, resolve_model
from recon.cameras import GRID_COLS, GRID_ROWS, VIEW_SIZE, pose_set
from recon.posed_views import BACKGROUND_GRAY

#: Output size (height, width) of the grid; the model was trained at exactly this size.
GRID_HEIGHT, GRID_WIDTH = GRID_ROWS * VIEW_SIZE, GRID_COLS * VIEW_SIZE

OutputType = Literal["pil", "np", "pt", "latent"]
Generator = torch.Generator | list[torch.Generator] | None

#: model_index.json entry → the (library, class) each component must have; we load them with exactly these classes.
COMPONENTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "scheduler": ("diffusers", "EulerAncestralDiscreteScheduler"),
    "vision_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "feature_extractor_clip": ("transformers", "CLIPImageProcessor"),
    "feature_extractor_vae": ("transformers", "CLIPImageProcessor"),
}


def scale_latents(latents: torch.Tensor) -> torch.Tensor:
    """SD latents (times the VAE scaling factor) → Zero123++'s latent space."""
    return (latents - 0.22) * 0.75


def unscale_latents(latents: torch.Tensor) -> torch.Tensor:
    """Zero123++'s latent space → SD latents (times the VAE scaling factor)."""
    return latents / 0.75 + 0.22


def scale_image(image: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] → the lower-contrast space Zero123++ was trained in."""
    return image * 0.5 / 0.8


def unscale_image(image: torch.Tensor) -> torch.Tensor:
    """VAE output in Zero123++'s image space → image in [-1, 1]."""
    return image / 0.5 * 0.8


def composite_on_gray(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB as is; RGBA pasted through its alpha onto gray 127, exactly as the reference does."""
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        raise InputError(
            f"Zero123++ takes RGB or RGBA images, not mode {image.mode}; convert it with .convert('RGBA')."
        )
    canvas = PIL.Image.new("RGB", image.size, (BACKGROUND_GRAY,) * 3)
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


def view_poses(version: str) -> dict[int, tuple[float, float]]:
    """View index → (azimuth relative to the input, absolute elevation), degrees, for "v1.2" or "v1.1"."""
    poses = pose_set(version)
    return {i: (float(a), float(e)) for i, (a, e) in enumerate(zip(poses.azimuths, poses.elevations, strict=True))}


def detect_version(name: str, ramping_coefficients: list[float]) -> Literal["v1.2", "v1.1"]:
    """Which release a model is: from its id or folder name, else from its ramp (v1.1's starts at exactly 0)."""
    for version in ("v1.1", "v1.2"):
        if version in name:
            return version
    return "v1.1" if ramping_coefficients[0] == 0.0 else "v1.2"


def image_processor_class():
    """``CLIPImageProcessor`` as transformers resolves it: its PIL backend when torchvision is absent."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None:
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


@dataclass
class Zero123PlusOutput:
    """What one call produced, for each input image."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    """The 640x960 grids: PIL list, array (B, 960, 640, 3) in [0, 1], tensor (B, 3, 960, 640) in [0, 1], or for
    output_type "latent" the final latents (B, 4, 120, 80) mapped back to SD scale (``unscale_latents``)."""
    poses: dict[int, tuple[float, float]]
    """View index → (azimuth relative to the input view, absolute elevation) in degrees."""
    version: str
    """Pose table the views follow ("v1.2" or "v1.1")."""


class Zero123PlusPipeline(DiffusionPipeline):
    """The Zero123++ sampler. Build it with :meth:`from_pretrained`; call it with one image or a list of images."""

    #: Order the components first run in a call, so offload hooks evict each one when the next starts.
    model_cpu_offload_seq = "vae->text_encoder->vision_encoder->unet"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        vision_encoder: CLIPVisionModelWithProjection,
        feature_extractor_clip,
        feature_extractor_vae,
        ramping_coefficients: list[float] | None = None,
        version: str = "v1.2",
    ) -> None:
        super().__init__()
        if ramping_coefficients is None or len(ramping_coefficients) != tokenizer.model_max_length:
            raise ValueError(f"ramping_coefficients must hold {tokenizer.model_max_length} values (one per token)")
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            vision_encoder=vision_encoder,
            feature_extractor_clip=feature_extractor_clip,
            feature_extractor_vae=feature_extractor_vae,
        )
        self.register_to_config(ramping_coefficients=list(ramping_coefficients), version=version)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        #: The per-step model evaluation (reference pass + main pass); replaceable by a compiled equivalent.
        self.denoiser = ReferenceUNet(unet)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        torch_dtype: torch.dtype | None = None,
        revision: str | None = None,
        scheduler: SchedulerName = "euler_ancestral",
        timestep_spacing: TimestepSpacing = "trailing",
        version: Literal["v1.2", "v1.1"] | None = None,
    ) -> Zero123PlusPipeline:
        """Load a hub id (from the cache, fetched first when online) or a local folder of the public layout.

        ``torch_dtype`` defaults to float32 for every component. ``version`` (pose table) is detected when None.
        Raises :class:`InputError` before loading anything when the weights are missing or the layout is wrong.
        """
        folder = resolve_model(model, revision)
        index = _read_model_index(folder)
        dtype = torch_dtype or torch.float32
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        processor = image_processor_class()
        return cls(
            vae=AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype),
            text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype),
            scheduler=make_scheduler(scheduler, scheduler_config, timestep_spacing),
            vision_encoder=CLIPVisionModelWithProjection.from_pretrained(folder / "vision_encoder", dtype=dtype),
            feature_extractor_clip=processor.from_pretrained(folder / "feature_extractor_clip"),
            feature_extractor_vae=processor.from_pretrained(folder / "feature_extractor_vae"),
            ramping_coefficients=index["ramping_coefficients"],
            version=version or detect_version(f"{model} {folder}", index["ramping_coefficients"]),
        )

    # ----------------------------------------------------------------------------------------------- the call

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        num_inference_steps: int = 75,
        guidance_scale: float = 4.0,
        generator: Generator = None,
        output_type: OutputType = "pil",
        reference_attention: bool = True,
        flexdiffuse: bool = True,
        control_image: PIL.Image.Image | None = None,
        controlnet=None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> Zero123PlusOutput:
        """Sample the six views of each input image.

        ``generator``: None draws from the global RNG (the reference's behaviour); a generator, or one per image,
        makes the run reproducible on its own (see the module docstring for the order of draws).
        ``guidance_scale`` ≤ 1 runs without classifier-free guidance (one UNet batch instead of two).
        ``reference_attention`` / ``flexdiffuse`` switch the two conditioning paths off (ablations, tests).
        ``controlnet`` (a diffusers ``ControlNetModel``) with ``control_image`` (a 640x960 grid) adds ControlNet
        residuals to the main pass, as the reference's normal-map generation does.
        """
        images = [image] if isinstance(image, PIL.Image.Image) else list(image)
        self._check_call(images, num_inference_steps, output_type, generator, controlnet, control_image)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0

        rgb = [composite_on_gray(im) for im in images]
        cond_lat = self.encode_condition(rgb, generator, negative=do_cfg, device=device)
        prompt_embeds = self.encode_prompt(rgb, do_cfg, flexdiffuse, device=device)
        control = self._control_tensor(control_image, controlnet, device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (len(rgb), self.unet.config.in_channels)
        shape += (GRID_HEIGHT // self.vae_scale_factor, GRID_WIDTH // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator)

        with self.progress_bar(total=len(self.scheduler.timesteps)) as progress:
            for t in self.scheduler.timesteps:
                v = self.predict(
                    latents,
                    t,
                    prompt_embeds,
                    cond_lat if reference_attention else None,
                    guidance_scale,
                    generator,
                    controlnet=controlnet,
                    control=control,
                    controlnet_conditioning_scale=controlnet_conditioning_scale,
                )
                latents = self.scheduler.step(v, t, latents, **step_kwargs, return_dict=False)[0]
                progress.update()

        latents = unscale_latents(latents)
        if output_type == "latent":
            grids = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            grids = self.image_processor.postprocess(unscale_image(decoded), output_type=output_type)
        self.maybe_free_model_hooks()
        version = self.config.version
        return Zero123PlusOutput(images=grids, poses=view_poses(version), version=version)

    def predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        cond_lat: torch.Tensor | None,
        guidance_scale: float,
        generator: Generator = None,
        controlnet=None,
        control: torch.Tensor | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        """The guided v-prediction of one step (reference noise drawn here, the UNet passes in ``self.denoiser``).

        ``cond_lat`` is None to run without reference attention (and without drawing its noise).
        """
        do_cfg = guidance_scale > 1.0
        sample = torch.cat([latents] * 2) if do_cfg else latents
        sample = self.scheduler.scale_model_input(sample, t)
        down = mid = None
        if controlnet is not None:
            down, mid = controlnet(
                sample,
                t,
                encoder_hidden_states=prompt_embeds,
                controlnet_cond=control,
                conditioning_scale=controlnet_conditioning_scale,
                return_dict=False,
            )
            down, mid = [d.to(self.unet.dtype) for d in down], mid.to(self.unet.dtype)
        reference = None
        if cond_lat is not None:
            noise = self.reference_noise(cond_lat, generator)
            reference = self.scheduler.add_noise(cond_lat, noise, t.reshape(-1))
            reference = self.scheduler.scale_model_input(reference, t.reshape(-1))
        v = self.denoiser(sample, t, prompt_embeds, reference, down, mid)
        if do_cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
        return v

    # ----------------------------------------------------------------------------------------------- conditioning

    def encode_condition(
        self,
        rgb: list[PIL.Image.Image],
        generator: Generator,
        negative: bool,
        device: torch.device,
    ) -> torch.Tensor:
        """Condition latents: raw VAE posterior samples (no scaling factor), ``[gray × B, image × B]`` with CFG."""
        posterior, gray = self.condition_posteriors(rgb, negative, device)
        cond = posterior.sample(generator=generator)
        if gray is None:
            return cond
        return torch.cat([gray.sample(generator=generator), cond])

    def condition_posteriors(
        self, rgb: list[PIL.Image.Image], negative: bool, device: torch.device
    ) -> tuple[DiagonalGaussianDistribution, DiagonalGaussianDistribution | None]:
        """The VAE posteriors :meth:`encode_condition` samples: the images', and with ``negative`` the gray
        image's, one per image (training keeps them: they are the same at every epoch)."""
        pixels = self.feature_extractor_vae(images=rgb, return_tensors="pt").pixel_values
        pixels = pixels.to(device=device, dtype=self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        if not negative:
            return posterior, None
        gray = self.vae.encode(torch.zeros_like(pixels[:1])).latent_dist.parameters
        return posterior, DiagonalGaussianDistribution(gray.expand(len(rgb), *gray.shape[1:]))

    def encode_prompt(
        self, rgb: list[PIL.Image.Image], do_cfg: bool, flexdiffuse: bool, device: torch.device
    ) -> torch.Tensor:
        """Prompt embeddings ``[empty × B, empty + ramp · image_embed]`` (CFG) or just the second half."""
        empty = self.empty_prompt_embeds(device)
        positive = empty.expand(len(rgb), *empty.shape[1:])
        if flexdiffuse:
            pixels = self.feature_extractor_clip(images=rgb, return_tensors="pt").pixel_values
            pixels = pixels.to(device=device, dtype=self.vae.dtype)
            image_embeds = self.vision_encoder(pixels).image_embeds.unsqueeze(-2)
            ramp = image_embeds.new_tensor(self.config.ramping_coefficients).unsqueeze(-1)
            positive = (empty + image_embeds * ramp).to(dtype=self.text_encoder.dtype)
        if not do_cfg:
            return positive
        return torch.cat([empty.expand_as(positive), positive])

    def empty_prompt_embeds(self, device: torch.device) -> torch.Tensor:
        """CLIP-text ``last_hidden_state`` of the empty prompt, (1, 77, D), in the text encoder's dtype."""
        ids = self.tokenizer(
            "", padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(device))[0].to(dtype=self.text_encoder.dtype, device=device)

    def reference_noise(self, cond_lat: torch.Tensor, generator: Generator) -> torch.Tensor:
        """Fresh noise for the reference latent: global RNG, the generator, or per image from its own generator."""
        if generator is None:
            return torch.randn_like(cond_lat)
        if not isinstance(generator, list):
            return randn_tensor(cond_lat.shape, generator=generator, device=cond_lat.device, dtype=cond_lat.dtype)
        groups = cond_lat.shape[0] // len(generator)  # rows are [gray × B, image × B]: keep that order
        per_image = [
            randn_tensor((groups, *cond_lat.shape[1:]), generator=g, device=cond_lat.device, dtype=cond_lat.dtype)
            for g in generator
        ]
        return torch.stack(per_image, dim=1).reshape(cond_lat.shape)

    # ----------------------------------------------------------------------------------------------- helpers

    def _check_call(self, images, num_inference_steps, output_type, generator, controlnet, control_image):
        if not images:
            raise InputError("No input image was given; pass one PIL image or a list of them.")
        for im in images:
            if not isinstance(im, PIL.Image.Image):
                raise InputError(f"Inputs must be PIL images, got {type(im).__name__}; open files with PIL.Image.open.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise InputError(f"The number of steps must be a positive integer, got {num_inference_steps!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type must be pil, np, pt or latent, got {output_type!r}.")
        if (controlnet is None) != (control_image is None):
            raise InputError("A ControlNet needs a control image and a control image needs a ControlNet; pass both.")
        if control_image is not None and control_image.size != (GRID_WIDTH, GRID_HEIGHT):
            raise InputError(
                f"The control image must be a {GRID_WIDTH}x{GRID_HEIGHT} grid of six views, got "
                f"{control_image.size[0]}x{control_image.size[1]}."
            )
        if isinstance(generator, list) and len(generator) != len(images):
            raise InputError(f"Got {len(generator)} generators for {len(images)} images; pass one per image.")

    def _control_tensor(self, control_image, controlnet, device) -> torch.Tensor | None:
        """The reference's ControlNet input: gray-composited grid, ToTensor then Normalize(0.5, 0.5), batch of 1."""
        if control_image is None:
            return None
        pixels = torch.from_numpy(np.asarray(composite_on_gray(control_image), dtype=np.uint8).copy())
        pixels = pixels.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
        return pixels[None].to(device=device, dtype=controlnet.dtype)

    def _step_kwargs(self, generator: Generator) -> dict[str, Any]:
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = 0.0
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs


def _read_model_index(folder: Path) -> dict[str, Any]:
    """model_index.json, checked: every component with its expected class, and 77 ramping coefficients."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except json.JSONDecodeError:
        raise InputError(f"{folder / 'model_index.json'} is not valid JSON; re-download the model.") from None
    for name, expected in COMPONENTS.items():
        found = tuple(index.get(name) or ())
        if found != expected:
            raise InputError(
                f"{folder / 'model_index.json'} declares {name} as {list(found) or 'nothing'}, not {list(expected)}; "
                "this is not a Zero123++ model folder."
            )
    ramp = index.get("ramping_coefficients")
    if not isinstance(ramp, list) or len(ramp) != 77 or not all(isinstance(x, int | float) for x in ramp):
        raise InputError(
            f"{folder / 'model_index.json'} lacks the 77 ramping_coefficients of Zero123++; re-download the model."
        )
    return index
