"""Throughput of ``img2mesh batch``: images per minute and GPU busy share, default runner and ``--ray``.

Runs the batch job on ``--items`` copies of the example photos with full-size random Zero123++ weights (built here
unless ``--model`` names a folder; they cost exactly what the real ones cost) and the reconstruction preset of
``--config``. Random weights make noise views that no reconstruction can mesh, so, after the real diffusion call,
each item's grid is replaced by the example oracle grid ``examples/spot_views.png`` (a real object): the GPU and
CPU do the work of a real job. A thread samples the GPU's utilisation (``nvidia-smi``, every 100 ms) during each run.

    python benchmarks/batch_throughput.py --items 16 --runners local,ray --write-results     # on a CUDA machine
    python benchmarks/batch_throughput.py --size tiny --items 3 --runners local --config cpu --set multiview.steps=2

Runners: ``local`` (the default runner) and ``ray`` (``--ray`` on a local Ray started here with this machine's CPUs
and GPUs).

Columns: "img/min" is done items over the whole run (model load and the pipeline's fill and drain included);
"steady img/min" counts from the first finished item to the last. "GPU busy" is the mean NVML utilisation (the share
of time a kernel runs; "idle" is its complement) over the whole run, over that steady window, and over the "GPU
window", from the first fit's start to the last fit's end (the pipeline full: both GPU phases have work, model load
and the CPU drain left out). "GPU phase" is the share of the GPU window in which a GPU phase (diffusion or fit) was
running, in whichever process, and "both" the share in which the two ran side by side. "host CPU busy" is the share
of all cores in use (``/proc/stat``) over the steady window. "sequential" is what the same stages cost one after
another (sum of each item's stage times), i.e. ``img2mesh run`` on the same machine.
"""

from __future__ import annotations

import _thread
import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from results_file import RESULTS, replace_section  # noqa: E402  (benchmarks/, the script's folder)

from img2mesh.pipeline import Img2Mesh  # noqa: E402

BEGIN, END = "<!-- batch_throughput:begin -->", "<!-- batch_throughput:end -->"
EXAMPLE_GRID = REPO / "examples" / "spot_views.png"
EXAMPLE_PHOTOS = REPO / "examples" / "photos"
PHASES_ENV = "BATCH_BENCH_PHASES"


class OracleViewsPipeline(Img2Mesh):
    """The real pipeline; after the diffusion has run, its noise grid is swapped for real oracle views.

    Each GPU phase appends its name, start and end (monotonic clock, shared by the machine's processes) to the file
    named by ``$BATCH_BENCH_PHASES``, from whichever process or Ray actor runs it.
    """

    def generate_views(self, cutout, seed=None):
        from PIL import Image

        start = time.monotonic()
        super().generate_views(cutout, seed)
        note_phase("views", start)
        return Image.open(EXAMPLE_GRID).convert("RGB")

    def fit(self, views):
        start = time.monotonic()
        try:
            return super().fit(views)
        finally:
            note_phase("fit", start)


def note_phase(name: str, start: float) -> None:
    path = os.environ.get(PHASES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps([name, start, time.monotonic()]) + "\n")


def read_phases(path: Path) -> list[tuple[str, float, float]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by the union of ``intervals``."""
    total, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total / (end - start) if end > start else 0.0


def both_running(phases: list[tuple[str, float, float]], start: float, end: float) -> float:
    """Share of [start, end] in which a diffusion and a fit ran at the same time."""
    views = [(a, b) for name, a, b in phases if name == "views"]
    fits = [(a, b) for name, a, b in phases if name == "fit"]
    pairs = [(max(a, c), min(b, d)) for a, b in views for c, d in fits if min(b, d) > max(a, c)]
    return covered(pairs, start, end)


class WarningCounter(logging.Handler):
    """Collects the warnings of a logger (the diffusion's fast path says so when it falls back to eager)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class GpuSampler:
    """Samples ``utilization.gpu`` of every visible GPU with nvidia-smi in the background."""

    def __init__(self, period_ms: int = 100) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.period_ms = period_ms
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is None:
            return self
        command = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        self._process = subprocess.Popen(
            [*command, f"-lms={self.period_ms}"], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                utilisation, memory = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), utilisation, memory))

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def busy(self, start: float, end: float) -> float | None:
        """Mean utilisation (0-1) between two monotonic times; None without samples."""
        window = [u for t, u, _ in self.samples if start <= t <= end]
        return sum(window) / len(window) / 100 if window else None

    def peak_memory_gib(self) -> float | None:
        return max(m for _, _, m in self.samples) / 1024 if self.samples else None


class CpuSampler:
    """Samples the host's busy share of all cores (``/proc/stat``, every 500 ms) in the background."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.samples: list[tuple[float, float]] = []
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> CpuSampler:
        if Path("/proc/stat").exists():
            self._thread.start()
        return self

    @staticmethod
    def _times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _read(self) -> None:
        busy, total = self._times()
        while not self._stop.wait(self.period_s):
            now_busy, now_total = self._times()
            if now_total > total:
                self.samples.append((time.monotonic(), (now_busy - busy) / (now_total - total)))
            busy, total = now_busy, now_total

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def busy(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else None


class StampedRunner:
    """A runner whose reports are time-stamped on arrival."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.name = runner.name
        self.arrivals: list[float] = []
        self.records: list = []

    def run(self, items, report) -> None:
        start = time.monotonic()

        def stamped(record) -> None:
            self.arrivals.append(time.monotonic())
            elapsed = self.arrivals[-1] - start
            stages = " ".join(f"{k}={v:.2f}" for k, v in record.timings.items())
            print(f"  {elapsed:7.1f} s  (unix {time.time():.1f})  {record.key}  {record.status}  {stages}", flush=True)
            self.records.append(record)
            report(record)

        self.runner.run(items, stamped)


def make_inputs(folder: Path, count: int) -> Path:
    """``count`` photos (the examples, cycled) under distinct names."""
    photos = sorted(EXAMPLE_PHOTOS.glob("*.png"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copy(photos[i % len(photos)], folder / f"photo{i:03d}.png")
    return folder


def measure(
    runner_name: str, config, photos: Path, work: Path, cpu_workers: int | None, time_limit: float | None = None
) -> dict:
    """Run one job and measure it; after ``time_limit`` seconds the job is interrupted and what finished counts."""
    from img2mesh.batch import collect_items, run_job

    out = work / f"out-{runner_name}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh job: nothing skipped as done by an earlier measurement
    phases_file = work / f"phases-{runner_name}.jsonl"
    phases_file.unlink(missing_ok=True)
    os.environ[PHASES_ENV] = str(phases_file)  # before Ray starts and the workers spawn: they inherit it
    if runner_name == "ray":
        from img2mesh.batch.ray_runner import RayRunner

        start_ray()
        runner = StampedRunner(RayRunner(config, out, pipeline=OracleViewsPipeline))
    else:
        from img2mesh.batch.local_runner import LocalRunner

        local = LocalRunner(config, out, cpu_workers=cpu_workers, pipeline=OracleViewsPipeline)
        runner = StampedRunner(local)
    warnings = WarningCounter()
    logging.getLogger("img2mesh.zero123pp.fast_step").addHandler(warnings)
    items = collect_items([str(photos)])
    # Interrupts the main thread alone (as Ctrl-C would): the runner shuts its workers down in order.
    limit = threading.Timer(time_limit, _thread.interrupt_main) if time_limit else None
    interrupted = False
    try:
        with GpuSampler() as sampler, CpuSampler() as cpu:
            start = time.monotonic()
            if limit is not None:
                limit.start()
            try:
                run_job(items, out, runner, progress=False)
            except KeyboardInterrupt:
                interrupted = True
            end = time.monotonic() if not interrupted else start + time_limit  # not the shutdown after it
    finally:
        if limit is not None:
            limit.cancel()
        logging.getLogger("img2mesh.zero123pp.fast_step").removeHandler(warnings)
        if runner_name == "ray":
            import ray

            ray.shutdown()
    records = runner.records
    done = [r for r in records if r.status == "done"]
    first, last = (runner.arrivals[0], runner.arrivals[-1]) if runner.arrivals else (end, end)
    stage_sums = [sum(r.timings.values()) for r in done]
    stages: dict[str, float] = {}
    for record in done:
        for stage, seconds in record.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds / len(done)
    phases = read_phases(phases_file)
    fits = [(a, b) for name, a, b in phases if name == "fit"]
    window = (min(a for a, _ in fits), max(b for _, b in fits)) if fits else None
    return {
        "runner": runner_name,
        "items": len(items),
        "done": len(done),
        "interrupted_after_s": time_limit if interrupted else None,
        "failed": [f"{r.key}: {r.error}" for r in records if r.status != "done"],
        "wall_s": end - start,
        "first_done_s": first - start,
        "done_s": [arrival - start for arrival in runner.arrivals],
        "img_per_min": 60 * len(done) / (end - start),
        "steady_img_per_min": 60 * (len(done) - 1) / (last - first) if len(done) > 1 and last > first else None,
        "gpu_busy": sampler.busy(start, end),
        "gpu_busy_steady": sampler.busy(first, last),
        "gpu_window_s": window[1] - window[0] if window else None,
        "gpu_busy_window": sampler.busy(*window) if window else None,
        "gpu_phase_window": covered([(a, b) for _, a, b in phases], *window) if window else None,
        "both_phases_window": both_running(phases, *window) if window else None,
        "peak_gpu_memory_gib": sampler.peak_memory_gib(),
        "host_cpu_busy_steady": cpu.busy(first, last),
        "sequential_img_per_min": 60 / (sum(stage_sums) / len(stage_sums)) if stage_sums else None,
        "stages": stages,
        "fast_path_warnings": warnings.messages,
    }


def start_ray() -> None:
    """A local Ray with this machine's CPUs and GPUs, no dashboard and no usage report."""
    import ray
    import torch

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=torch.cuda.device_count(),
        include_dashboard=False,
        object_store_memory=4 * 1024**3,
    )


def table(rows: list[dict]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.0f}%"

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = [
        "| runner | items | done | wall s | first done s | img/min | steady img/min "
        "| GPU busy: all / steady / GPU window | GPU phase / both (GPU window) | host CPU busy (steady) "
        "| peak GPU GiB | sequential img/min | mean s per stage |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        busy = " / ".join(pct(r[k]) for k in ("gpu_busy", "gpu_busy_steady", "gpu_busy_window"))
        done = f"{r['done']}" + (f" (stopped at {r['interrupted_after_s']:.0f} s)" if r["interrupted_after_s"] else "")
        lines.append(
            f"| {r['runner']} | {r['items']} | {done} | {r['wall_s']:.1f} | {r['first_done_s']:.1f} "
            f"| {num(r['img_per_min'])} | {num(r['steady_img_per_min'])} | {busy} "
            f"| {pct(r['gpu_phase_window'])} / {pct(r['both_phases_window'])} | {pct(r['host_cpu_busy_steady'])} "
            f"| {num(r['peak_gpu_memory_gib'])} | {num(r['sequential_img_per_min'])} | {stages} |"
        )
    return "\n".join(lines)


def environment() -> str:
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    versions = [f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    try:
        import ray

        versions.append(f"ray {ray.__version__}")
    except ImportError:
        pass
    return f"{card}; {', '.join(versions)}; {datetime.date.today().isoformat()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=16, help="photos in the batch")
    parser.add_argument("--runners", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--model", help="Zero123++ folder; default: build random weights of --size")
    parser.add_argument("--size", default="full", choices=["full", "tiny"], help="random weights to build")
    parser.add_argument("--config", help="config preset or YAML (default: the built-in defaults, i.e. default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (YAML)")
    parser.add_argument("--cpu-workers", type=int, help="CPU processes of the default runner")
    parser.add_argument("--time-limit", type=float, help="stop each job after this many seconds; what finished counts")
    parser.add_argument("--work", type=Path, help="folder for inputs and outputs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--write-results", action="store_true", help=f"write the table into {RESULTS.name}")
    args = parser.parse_args()

    from img2mesh.commands.options import parse_set_values
    from img2mesh.config import load_config

    work = args.work or Path(tempfile.mkdtemp(prefix="batch-bench-"))
    model = args.model
    if model is None:
        from img2mesh.testing.random_weights import save_random_zero123pp

        start = time.monotonic()
        model = str(save_random_zero123pp(work / f"zero123pp-{args.size}", size=args.size))
        print(f"random {args.size} weights built in {time.monotonic() - start:.1f} s", flush=True)
    overrides = {"multiview.model": model, "preview.enabled": False, **parse_set_values(args.set)}
    config = load_config(args.config, overrides)
    photos = make_inputs(work / "photos", args.items)

    rows = []
    for name in args.runners.split(","):
        row = measure(name.strip(), config, photos, work, args.cpu_workers, args.time_limit)
        rows.append(row)
        print(json.dumps(row), flush=True)
    weights = f"{args.size}-size random" if args.model is None else args.model
    settings = ", ".join(f"{k}={v}" for k, v in overrides.items() if k != "multiview.model")
    command = " ".join(["python", "benchmarks/batch_throughput.py", *sys.argv[1:]])
    report = "\n".join(
        [
            "## Batch throughput (`img2mesh batch`)",
            "",
            f"{environment()}. Command: `{command}`; config `{args.config or 'default'}` with {settings}; "
            f"weights: {weights}; views swapped for the oracle grid after the diffusion ran.",
            "",
            table(rows),
        ]
    )
    print(report)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.write_results:
        replace_section(BEGIN, END, report)


if __name__ == "__main__":
    main()
