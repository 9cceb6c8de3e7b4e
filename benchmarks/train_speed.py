"""Fine-tuning cost: ``train-data`` render time per mesh, and seconds per step and peak memory of LoRA and full
fine-tuning (``img2mesh train``).

Builds full-size random weights of the real architecture (they cost exactly what the real ones cost) unless
``--model`` names a folder. Renders ``--train-meshes`` meshes (the test meshes of ``tests/data/meshes``, cycled;
each copy draws its own viewpoints) with 2 pairs each at the default sizes (320-px views in 640x960 grids, 512-px
conditions, 2x supersampling) and trains each mode on them for ``--warmup`` + ``--steps`` steps at
``--batch-size`` with the defaults (bf16 autocast on CUDA, gradient checkpointing, workers reading ahead, and on
CUDA the forward and backward pass replayed from a CUDA graph captured at the third step, so the timed steps are
replays; "CUDA graph" says whether the capture worked). Last, times ``train-data`` at its default settings (8 pairs
per mesh) on ``--meshes`` meshes.

    python benchmarks/train_speed.py --write-results                  # on a CUDA machine
    python benchmarks/train_speed.py --size tiny --device cpu --meshes 0 --train-meshes 2 --warmup 1 --steps 2

Columns: "s/step" is the mean wall time of the timed steps (each ends on the loss's ``.item()``, so the GPU work
is done), from the run's own ``log.csv``; "peak GB" is ``torch.cuda.max_memory_allocated`` over the run (weights,
optimiser state and activations); "encoders s" is the frozen part of a step alone (condition VAE posterior and CLIP
embedding, target VAE posterior), mean of 5, which a step pays only for pairs it has not seen before
(``cache_encodings``): the warm-up steps see every training pair, so the timed steps are the steady state of the
second epoch on. Checkpoints are not written during the timed run.

``--profile N`` runs N more steps of each mode under ``torch.profiler`` and adds "GPU busy s": the kernels' time per
step. Far below s/step, the step waits on the host (Python, kernel launches), not on the GPU; the script also prints
each mode's heaviest operators by device time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from results_file import replace_section  # noqa: E402  (benchmarks/, the script's folder)

BEGIN, END = "<!-- train_speed:begin -->", "<!-- train_speed:end -->"
TEST_MESHES = REPO / "tests" / "data" / "meshes"


def mesh_folder(count: int, root: Path) -> Path:
    """``count`` meshes: the test meshes cycled, each round in its own folder of links (OBJ materials beside)."""
    from recon.mesh_grids import MESH_SUFFIXES

    files = sorted(TEST_MESHES.iterdir())
    meshes = [f for f in files if f.suffix.lower() in MESH_SUFFIXES]
    for index in range(count):
        folder = root / f"round{index // len(meshes):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for file in files if index % len(meshes) == 0 else []:
            if file.suffix.lower() not in MESH_SUFFIXES:
                (folder / file.name).symlink_to(file)
        mesh = meshes[index % len(meshes)]
        (folder / mesh.name).symlink_to(mesh)
    return root


def time_rendering(meshes: Path, data: Path, device: str, conditions: int = 8) -> dict:
    """Seconds for train-data on the folder (default settings but ``conditions``), and for only loading the meshes."""
    from img2mesh.train.config import TrainDataConfig
    from img2mesh.train.data import find_meshes, render_training_data
    from recon.mesh_grids import load_normalised_mesh
    from recon.render import prepare_mesh

    config = TrainDataConfig(device=device, conditions=conditions)
    start = time.perf_counter()
    report = render_training_data(meshes, data, config, progress=False)
    total = time.perf_counter() - start
    files = find_meshes(meshes)
    start = time.perf_counter()
    for path in files:
        prepare_mesh(load_normalised_mesh(path), device)
    loading = time.perf_counter() - start
    count = len(report.rendered)
    return {
        "meshes": count,
        "skipped": len(report.skipped),
        "conditions": config.conditions,
        "seconds": round(total, 1),
        "seconds_per_mesh": round(total / max(count, 1), 2),
        "loading_seconds_per_mesh": round(loading / max(len(files), 1), 2),
        "extrapolated_100_meshes_s": round(100 * total / max(count, 1), 0),
    }


def time_training(
    data: Path, model: Path, out: Path, mode: str, batch: int, warmup: int, steps: int, profile: int = 0
) -> dict:
    """Seconds per step and peak memory of ``steps`` steps after ``warmup``, and the frozen encoders' share."""
    import torch

    from img2mesh.train.config import TrainConfig
    from img2mesh.train.data import PairDataset, collate_pairs
    from img2mesh.train.trainer import LOG, Trainer, encode_pairs

    config = TrainConfig(
        model=str(model), mode=mode, batch_size=batch, steps=warmup + steps, validate_every=0, workers=4
    )
    trainer = Trainer(data, out, config, progress=False)
    trainer.setup()
    trainer.save_checkpoint = lambda step: None  # time the steps, not the disk
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
    rows = [line.split(",") for line in (out / LOG).read_text().splitlines()[1:]]
    seconds = [float(row[3]) for row in rows]
    per_step = (seconds[-1] - seconds[warmup - 1]) / steps if warmup else seconds[-1] / steps

    size = trainer.split.settings["view_size"]
    dataset = PairDataset(trainer.split.train, (3 * size, 2 * size))
    _, conditions, targets = collate_pairs([dataset[i % len(dataset)] for i in range(batch)])
    pipe = trainer.pipe
    encoder_times = []
    with torch.no_grad(), trainer.accelerator.autocast():
        for _ in range(6):
            start = time.perf_counter()
            encode_pairs(pipe, conditions, targets)
            if cuda:
                torch.cuda.synchronize()
            encoder_times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in trainer.params)
    result = {
        "mode": mode,
        "batch": batch,
        "steps_timed": steps,
        "s_per_step": round(per_step, 3),
        "peak_gb": round(peak, 2),
        "encoders_s": round(sum(encoder_times[1:]) / 5, 3),
        "trainable_params_m": round(trainable / 1e6, 1),
        "cuda_graph": trainer.graphed is not None and trainer.graphed.graph is not None,
        "first_loss": float(rows[0][1]),
        "last_loss": float(rows[-1][1]),
    }
    if profile:
        result["gpu_busy_s"] = profile_steps(trainer, profile)
    del trainer, pipe
    if cuda:
        torch.cuda.empty_cache()
    return result


def profile_steps(trainer, steps: int) -> float:
    """Run ``steps`` more steps under the profiler; print the heaviest operators, return device seconds per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    trainer.start, trainer.config.steps = trainer.config.steps, trainer.config.steps + steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        trainer.run()
    averages = prof.key_averages()
    print(f"{trainer.config.mode}: {steps} profiled steps", flush=True)
    print(averages.table(sort_by="self_device_time_total", row_limit=12), flush=True)
    return round(sum(event.self_device_time_total for event in averages) / 1e6 / steps, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Model folder; default: full-size random weights built here.")
    parser.add_argument("--size", choices=["full", "tiny"], default="full", help="Random weights to build.")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="Device of the renderer.")
    parser.add_argument("--meshes", type=int, default=11, help="Meshes to time train-data on (test meshes, cycled).")
    parser.add_argument("--train-meshes", type=int, default=4, help="Meshes rendered (2 pairs each) to train on.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3, help="Steps run before timing.")
    parser.add_argument("--steps", type=int, default=8, help="Steps timed.")
    parser.add_argument("--modes", default="lora,full", help="Comma-separated: lora, full.")
    parser.add_argument("--profile", type=int, default=0, help="Steps per mode run under torch.profiler.")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    parser.add_argument("--commit", default=None, help="Commit to report (default: the checkout's HEAD).")
    parser.add_argument("--write-results", action="store_true", help="Rewrite this benchmark's RESULTS.md section.")
    args = parser.parse_args()

    from img2mesh.testing.random_weights import save_random_zero123pp

    results: dict = {"card": _card(), "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    results["commit"] = args.commit or _commit()
    results["command"] = "python benchmarks/train_speed.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            start = time.perf_counter()
            model = save_random_zero123pp(root / "model", size=args.size)
            results["weights_s"] = round(time.perf_counter() - start, 1)
        # Pairs to train on first (small), so a slow renderer cannot starve the step measurements.
        data = root / "pairs"
        meshes = mesh_folder(args.train_meshes, root / "train-meshes")
        results["render_small"] = time_rendering(meshes, data, args.device, conditions=2)
        _dump(results, args.json)
        results["train"] = []
        for mode in args.modes.split(","):
            row = time_training(
                data, model, root / f"run-{mode}", mode, args.batch_size, args.warmup, args.steps, args.profile
            )
            results["train"].append(row)
            _dump(results, args.json)
        if args.meshes:
            results["render"] = time_rendering(mesh_folder(args.meshes, root / "meshes"), root / "data", args.device)
            _dump(results, args.json)
    table = _table(results)
    print(table)
    if args.write_results:
        replace_section(BEGIN, END, table)


def _table(results: dict) -> str:
    lines = [
        "## Fine-tuning cost (`benchmarks/train_speed.py`)",
        "",
        f"{results['card']}, {results['date']}, commit {results['commit']}: `{results['command']}`",
        "",
    ]
    for key in ("render_small", "render"):
        render = results.get(key)
        if render:
            lines += [
                f"train-data ({render['conditions']} pairs per mesh, otherwise default settings): {render['meshes']} "
                f"meshes in {render['seconds']} s = {render['seconds_per_mesh']} s per mesh (loading alone "
                f"{render['loading_seconds_per_mesh']} s), so 100 meshes take about "
                f"{render['extrapolated_100_meshes_s']:.0f} s.",
                "",
            ]
    lines += [
        "| mode | batch | trainable M | CUDA graph | s/step | GPU busy s | peak GB | encoders s | loss first → last |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results.get("train", []):
        lines.append(
            f"| {row['mode']} | {row['batch']} | {row['trainable_params_m']} | "
            f"{'yes' if row.get('cuda_graph') else 'no'} | {row['s_per_step']} | "
            f"{row.get('gpu_busy_s', 'not profiled')} | "
            f"{row['peak_gb']} | {row['encoders_s']} | {row['first_loss']:.3f} → {row['last_loss']:.3f} |"
        )
    return "\n".join(lines)


def _dump(results: dict, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=1))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _card() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
