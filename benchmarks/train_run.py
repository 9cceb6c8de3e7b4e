"""A LoRA fine-tuning run end to end as a user makes it: ``train-data`` on the test meshes, ``img2mesh train``, and
its loss curve drawn as a PNG beside the last validation sheet.

With random weights (the default: full-size, built here) this checks the mechanics of a long run (the loss falls and
stays finite, checkpoints, validation sheets, the adapter loads back through ``--lora``); what the sheets look like
says nothing about a real fine-tune, which needs the real Zero123++ weights (``--model``).

    python benchmarks/train_run.py --out run-500 --steps 500             # on a CUDA machine
    python benchmarks/train_run.py --out /tmp/r --size tiny --steps 4 --validate-every 2 --view-size 64 \
        --conditions 1   # smoke test

Writes into ``--out``: ``pairs/`` (the training data), ``run/`` (the run folder), ``loss_curve.png`` (loss per step
and its 25-step running mean) and ``validation.png`` (the last validation sheet at half size), and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEST_MESHES = REPO / "tests" / "data" / "meshes"


def draw_curve(log: Path, out: Path, window: int = 25) -> tuple[float, float]:
    """Loss per step (light) and its running mean (dark) as a PNG; returns the first and last running means."""
    from PIL import Image, ImageDraw

    with log.open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    spans = [losses[max(0, i - window + 1) : i + 1] for i in range(len(losses))]
    means = [sum(span) / len(span) for span in spans]
    width, height, margin = 800, 400, 40
    top = max(losses) * 1.05
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((margin, margin // 2, width - margin // 2, height - margin), outline="black")

    def point(step: int, value: float) -> tuple[float, float]:
        x = margin + (width - 1.5 * margin) * step / max(len(losses) - 1, 1)
        y = height - margin - (height - 1.5 * margin) * value / top
        return x, y

    draw.line([point(i, v) for i, v in enumerate(losses)], fill=(170, 190, 230), width=1)
    draw.line([point(i, v) for i, v in enumerate(means)], fill=(20, 50, 140), width=2)
    draw.text((margin, height - margin + 8), f"step 1 .. {len(losses)}", fill="black")
    draw.text((margin + 4, margin // 2 + 4), f"loss (max {top:.3f}); dark: {window}-step mean", fill="black")
    image.save(out)
    return means[min(window, len(means)) - 1], means[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, help="Model folder; default: random weights of --size built here.")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--view-size", type=int, default=320, help="Target view size of the training data.")
    parser.add_argument("--conditions", type=int, default=8, help="Training pairs per mesh.")
    args = parser.parse_args()

    from click.testing import CliRunner
    from PIL import Image

    from img2mesh.cli import cli
    from img2mesh.testing.random_weights import save_random_zero123pp

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or save_random_zero123pp(args.out / "model", size=args.size)
    timings = {}
    for name, command in (
        ("train-data", ["train-data", TEST_MESHES, "-o", args.out / "pairs", "--view-size", args.view_size,
                        "--conditions", args.conditions, "-q"]),
        ("train", [
            "train", args.out / "pairs", "-o", args.out / "run", "--model", model, "--steps", args.steps,
            "--set", f"validate_every={args.validate_every}", "--set", f"checkpoint_every={args.steps}", "-q",
        ]),
    ):  # fmt: skip
        start = time.perf_counter()
        result = CliRunner().invoke(cli, [str(c) for c in command])
        timings[name] = time.perf_counter() - start
        if result.exit_code != 0:
            raise SystemExit(f"{name} failed: {result.output}{result.exception or ''}")
    first, last = draw_curve(args.out / "run" / "log.csv", args.out / "loss_curve.png")
    sheets = sorted((args.out / "run" / "validation").glob("step-*.png"))
    sheet = Image.open(sheets[-1])
    sheet.resize((sheet.width // 2, sheet.height // 2)).save(args.out / "validation.png")
    print(
        f"train-data {timings['train-data']:.1f} s, train {args.steps} steps {timings['train']:.1f} s "
        f"(validation every {args.validate_every}); 25-step mean loss {first:.4f} -> {last:.4f}; "
        f"{len(sheets)} validation sheets; curve {args.out / 'loss_curve.png'}"
    )


if __name__ == "__main__":
    main()
