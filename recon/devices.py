"""Which device and precision every stage runs on, from the user's words ("auto", "cuda", "fp16", ...).

One policy for the whole job: "auto" takes CUDA, then MPS, then the CPU, for the diffusion model and the
reconstruction alike; reconstruction runs on MPS where this torch can differentiate 3-D grid sampling there, else on
the CPU, said in one log line (:func:`fit_device`). Asking for a device that is not there is an input error with one
sentence, never a CUDA traceback deep inside a stage. Precision follows the device: "auto" is fp16 on CUDA and MPS
(the diffusion model's weights are published in fp16 and run well in it) and fp32 on the CPU. fp16 on the CPU is
upcast to fp32 with a warning rather than refused: a config written for a GPU then still runs on a laptop, and fp32
is both faster and safer than fp16 on a CPU. bf16 on a CUDA card without bf16 support is refused, since there is no
drop-in equivalent the user would expect.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from recon.errors import InputError

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" (CUDA, then MPS, then CPU), "cuda", "cuda:N", "mps" or "cpu" as a device that exists."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise InputError("MPS (Apple GPU) was requested but is not available here; use --device cpu or auto.")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise InputError(
                f"CUDA was requested but no CUDA GPU is visible (torch {torch.__version__}, {build}); "
                "use --device cpu or auto, or check the driver and CUDA_VISIBLE_DEVICES."
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"GPU {device.index} was requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                "pick an index below that or use --device cuda."
            )
        return device
    raise InputError(f"Unknown device {name!r}; use auto, cuda, cuda:N, mps or cpu.")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto", "fp16", "bf16" or "fp32" as the torch dtype to run on ``device`` (see the module notes)."""
    name = name.strip().lower()
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise InputError(f"Unknown dtype {name!r}; use auto, fp16, bf16 or fp32.")
    if name == "fp16" and device.type == "cpu":
        log.warning("fp16 is slow or unsupported on the CPU, so the model runs in fp32 there (use a GPU for fp16).")
        return torch.float32
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(
            f"bf16 was requested but {torch.cuda.get_device_name(device)} does not support it; use --dtype fp16."
        )
    return DTYPES[name]


def requested_fit_device(device: str, recon_device: str) -> torch.device:
    """The device a fit is asked to run on: ``device``, or the recon config's own ``recon_device`` when "auto"."""
    return resolve_device(device if device != "auto" else recon_device)


def fit_device(device: torch.device) -> torch.device:
    """Where reconstruction runs for ``device``: itself, except MPS where this torch lacks 3-D grid sampling or its
    gradient (the fit's core operation), then the CPU, with one warning."""
    if device.type != "mps":
        return device
    try:
        volume = torch.zeros(1, 1, 2, 2, 2, device=device, requires_grad=True)
        F.grid_sample(volume, torch.zeros(1, 1, 1, 1, 3, device=device), align_corners=True).sum().backward()
    except (NotImplementedError, RuntimeError) as error:
        log.warning("Reconstruction runs on the CPU: this torch cannot fit on MPS (%s).", str(error).split("\n")[0])
        return torch.device("cpu")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
