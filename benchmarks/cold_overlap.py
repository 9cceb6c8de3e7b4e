"""Would a thread that warms the GPU while the diffusion libraries import shorten a cold ``img2mesh views`` call?

A cold ``views`` call spends ~9 s (H200 host) importing diffusers and transformers with the GPU idle, then pays the
CUDA context and the first use of cuDNN, cuBLAS(Lt) and the attention kernels inside its model load and first step.
The imports hold the GIL; the device's set-up mostly runs inside torch calls that release it. This measures, in fresh
processes (alternating, ``--repeats`` of each), the seconds until "imports done and device warm":

- ``sequential``: ``import torch``, the views command's imports, then the warm-up (context, an fp16 convolution, the
  attention and a GEMM, synchronised): what a call pays today, in this order or spread over its load and first step;
- ``overlap``: the same warm-up in a thread started right after ``import torch``, joined after the imports.

The difference of the medians is what such a thread could save a cold call, at most (it warms libraries, not every
kernel the model uses); ``imports`` tells whether the thread slows the imports. Meant for a CUDA device
(``--device cpu`` only checks that the script runs).

    python benchmarks/cold_overlap.py --repeats 3 --json cold_overlap.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, threading, time
start = time.monotonic()
import torch

marks = {"torch": time.monotonic() - start}

DEVICE = sys.argv[2]

def warm():
    torch.zeros(1, device=DEVICE)
    x = torch.randn(2, 320, 40, 40, device=DEVICE, dtype=torch.half)
    w = torch.randn(320, 320, 3, 3, device=DEVICE, dtype=torch.half)
    y = torch.nn.functional.conv2d(x, w, padding=1)
    q = torch.randn(2, 8, 1600, 40, device=DEVICE, dtype=torch.half)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    (y.flatten(2) @ y.flatten(2).transpose(1, 2)).sum().item()

overlap = sys.argv[1] == "overlap"
if overlap:
    thread = threading.Thread(target=warm, daemon=True)
    thread.start()
import img2mesh.pipeline, img2mesh.zero123pp.fast_step, img2mesh.zero123pp.pipeline, recon.posed_views

marks["imports"] = time.monotonic() - start
if overlap:
    thread.join()
else:
    warm()
marks["ready"] = time.monotonic() - start
print(json.dumps(marks))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the runs and medians here")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs: dict[str, list[dict]] = {"sequential": [], "overlap": []}
    for _ in range(args.repeats):
        for variant in runs:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, variant, args.device],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=env,
                check=True,
            )
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(variant, runs[variant][-1], flush=True)
    medians = {
        variant: {key: statistics.median(run[key] for run in rows) for key in rows[0]} for variant, rows in runs.items()
    }
    saved = medians["sequential"]["ready"] - medians["overlap"]["ready"]
    print(json.dumps({"medians": medians, "ready_saved_s": saved}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians, "ready_saved_s": saved}, indent=1))


if __name__ == "__main__":
    main()
