"""Samplers for Zero123++, built from the repository's scheduler config (linear betas, v-prediction).

Every official example swaps the repository's Euler-ancestral "linspace" scheduler for the same class with
"trailing" timestep spacing, so that is the default here. The other samplers take the same config, so the
noise schedule and prediction type stay those the UNet was trained with; the reference latent is noised through
whichever scheduler runs (its ``add_noise`` and ``scale_model_input``), as the reference pipeline does.
"""

from __future__ import annotations

from typing import Any, Literal

SchedulerName = Literal["euler_ancestral", "euler", "ddim", "dpm_solver"]
TimestepSpacing = Literal["trailing", "linspace", "leading"]

_CLASSES = {
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm_solver": "DPMSolverMultistepScheduler",
}


def make_scheduler(name: SchedulerName, config: dict[str, Any], timestep_spacing: TimestepSpacing = "trailing"):
    """A diffusers scheduler of kind ``name`` on the model's scheduler ``config`` with the given timestep spacing."""
    import diffusers

    if name not in _CLASSES:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(_CLASSES)}.")
    cls = getattr(diffusers, _CLASSES[name])
    return cls.from_config(config, timestep_spacing=timestep_spacing)
