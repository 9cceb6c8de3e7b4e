"""diffusers' model-zoo packages load only the modules Zero123++ uses, and every other name is still there on demand."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import img2mesh.zero123pp.pipeline as ours
loaded = sorted(m for m in sys.modules if m.startswith(("diffusers.models.", "diffusers.hooks")))
unused = ["diffusers.models.autoencoders.autoencoder_kl_wan", "diffusers.models.unets.unet_3d_condition",
          "diffusers.models.transformers.transformer_flux", "diffusers.hooks.layerwise_casting"]
before = {m: m in sys.modules for m in unused}
import diffusers
from diffusers.models.autoencoders import AutoencoderKLWan  # a name the deferred __init__ holds: it runs now
from diffusers.models.unets import UNet2DConditionModel
from diffusers.models.transformers import FluxTransformer2DModel
from diffusers.hooks import apply_layerwise_casting
print(json.dumps({
    "before": before,
    "after": {m: m in sys.modules for m in unused},
    "same": [diffusers.AutoencoderKL is ours.AutoencoderKL, UNet2DConditionModel is ours.UNet2DConditionModel],
    "wan": AutoencoderKLWan.__name__,
    "flux": FluxTransformer2DModel.__name__,
    "hook": callable(apply_layerwise_casting),
}))
"""


def test_the_pipeline_loads_one_vae_and_one_unet_and_the_rest_stays_importable() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not any(report["before"].values()), report["before"]
    assert all(report["after"].values()), report["after"]
    assert report["same"] == [True, True]
    assert report["wan"] == "AutoencoderKLWan" and report["flux"] == "FluxTransformer2DModel" and report["hook"]
