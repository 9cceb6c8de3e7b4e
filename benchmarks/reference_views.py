"""One cold call of the public reference Zero123++ pipeline, as its README runs it: load, 75 steps, save the grid.

The yardstick of ``serve_latency.py``'s cold phase (issue 18: one ``img2mesh views`` call against the reference's
on the same machine, in the same run). The reference is SUDO AI's diffusers custom pipeline
(github.com/SUDO-AI-3D/zero123plus, ``diffusers-support/pipeline.py``, Apache-2.0); it is not part of this
repository: bring the folder holding that ``pipeline.py`` and name it with ``--pipeline``.

    python benchmarks/reference_views.py --pipeline REF_DIR --model MODEL_DIR --photo examples/photos/spot.png

Prints one JSON line: seconds for the imports, the load (to the device, fp16), the 75-step call and the save.
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="folder holding the reference pipeline.py")
    parser.add_argument("--model", required=True, help="Zero123++ weights folder")
    parser.add_argument("--photo", required=True)
    parser.add_argument("--out", default="reference_grid.png")
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    seconds = {"imports": time.monotonic() - STARTED}
    start = time.monotonic()
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    # trust_remote_code: the "remote" code is the local pipeline.py brought for the run.
    pipe = DiffusionPipeline.from_pretrained(
        args.model, custom_pipeline=args.pipeline, torch_dtype=dtype, trust_remote_code=True
    )
    pipe.to(args.device)
    seconds["load"] = time.monotonic() - start
    start = time.monotonic()
    grid = pipe(Image.open(args.photo), num_inference_steps=args.steps).images[0]
    seconds["call"] = time.monotonic() - start
    start = time.monotonic()
    grid.save(args.out)
    seconds["save"] = time.monotonic() - start
    seconds["total_in_process"] = time.monotonic() - STARTED
    print(json.dumps({"reference": seconds, "size": list(grid.size)}))


if __name__ == "__main__":
    main()
