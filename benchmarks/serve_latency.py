"""``img2mesh serve`` under load, and where the seconds of one cold ``img2mesh recon`` / ``img2mesh views`` call go.

A warm server (uvicorn on 127.0.0.1 in this process, the HTTP client in threads) with full-size random Zero123++
weights (built here unless ``--model`` names a folder; they cost exactly what the real ones cost) and the pipeline of
the tests: the real diffusion call, then Spot's oracle grid ``examples/spot_views.png`` for the reconstruction (random
weights draw noise, which nothing can mesh). Phases, in this order (``batch`` listed before the server's phases in
``--phases`` runs first instead, while no server holds the card), each skipped when ``--deadline`` would be passed:

1. ``first``: the server's first ``--first`` jobs (default 5), submitted at once: they take every path a job can take
   (diffusion beside a fit, the CPU workers' write, the fitting process's write of the job left alone at the end),
   so the memory sample after them is a baseline that a first overlap does not move.
2. ``sequential``: photos one at a time, photo → job done (GLB written) as the client sees it; median and spread.
3. ``burst``: ``--burst`` photos submitted at once: wall time and images per minute (all, and steady: first done to
   last done).
4. ``cold`` (while the server idles): one process per call as a user runs it, each through ``cold_call.py`` (its
   timeline: imports, CUDA context, model load, first denoising step, the rest): ``img2mesh recon GRID --export``,
   ``img2mesh views PHOTO``, and with ``--reference`` the public reference pipeline's cold call beside them
   (``reference_views.py``); ``--cold-variants`` adds views with ``--compile off`` and with cuDNN autotuning and
   recon without CUDA graphs; ``--cold-baseline DIR`` the recon and views calls of another checkout (before a change);
   ``--cold-deps-only`` runs every cold call (the reference's too) in a venv of img2mesh's installed dependencies only,
   as `pip install img2mesh` would give, and the reference in one of those plus torchvision, which it imports
   (``dependency_env.py``: optional packages such as peft and scikit-learn that a shared machine's Python holds cost
   diffusers' and transformers' imports seconds).
5. ``fill``: more photos, ``--burst`` at a time, until ``--total`` jobs ran.
6. ``batch``: ``benchmarks/batch_throughput.py`` on ``--burst`` photos with the same weights and config (one process,
   its own model load), for the throughput comparison.

Memory (resident: the server and its worker processes, Inductor's compile workers apart; GPU: nvidia-smi, the whole
card and per process where it names them; the server's own CUDA allocator; which processes hold a CUDA context, read
from their memory maps, which works where nvidia-smi cannot name processes) is sampled when the server is ready,
after the baseline's jobs (``first``, else job 5), after the burst and after each chunk of ``fill``: a curve, which
tells a one-off step from a slope, and where a step lies.

    python benchmarks/serve_latency.py --phases sequential,burst,fill,batch --json out.json   # a CUDA machine
    python benchmarks/serve_latency.py --phases batch,first,burst,fill --set multiview.compile=graphs --json out.json
    python benchmarks/serve_latency.py --phases cold --reference REF_DIR --json cold.json
    python benchmarks/serve_latency.py --phases cold --reference REF_DIR --cold-deps-only --json cold.json
    python benchmarks/serve_latency.py --size tiny --config cpu --set multiview.steps=2 --sequential 2 --burst 2 \\
        --total 5 --phases sequential,burst,fill
    python benchmarks/serve_latency.py --size tiny --config cpu --set multiview.steps=2 --first 2 --burst 2 \\
        --total 7 --phases batch,first,burst,fill
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from results_file import replace_section  # noqa: E402  (benchmarks/, the script's folder)

BEGIN, END = "<!-- serve_latency:begin -->", "<!-- serve_latency:end -->"
PHOTOS = sorted((REPO / "examples" / "photos").glob("*.png"))
GRID = REPO / "examples" / "spot_views.png"
PHASES = ("first", "sequential", "burst", "cold", "fill", "batch")
#: The phases that run on the server.
SERVER_PHASES = ("first", "sequential", "burst", "fill")


class Clock:
    """Seconds left before the deadline; phases ask before they start."""

    def __init__(self, deadline: float | None) -> None:
        self.start = time.monotonic()
        self.deadline = deadline

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - (time.monotonic() - self.start)


def nvidia_smi(query: str) -> str | None:
    """nvidia-smi's CSV answer (no header, no units) to ``query`` about GPU 0, or None where it cannot answer."""
    try:
        return subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def memory_sample(jobs: int, label: str) -> dict:
    """Resident memory (server and the runner's workers; Inductor's compile workers apart), GPU memory (the whole
    card, per process where nvidia-smi names them), the server process's own CUDA allocator, MiB, and each process
    with what it holds (:func:`processes`)."""
    table = processes()
    resident = sum(p["rss_mib"] for p in table if p["role"] != "compile worker")
    compiler = sum(p["rss_mib"] for p in table if p["role"] == "compile worker")
    sample = {"label": label, "jobs": jobs, "resident_mib": resident, "compiler_mib": compiler}
    sample |= {"gpu_mib": gpu_memory_mib(), "processes": table}
    sample["cuda_processes"] = sum(p["cuda_context"] is True for p in table)
    import torch

    if torch.cuda.is_available():
        sample["server_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
        sample["server_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
    return sample


def processes() -> list[dict]:
    """This process (``server``) and every process it started (``child``, or ``compile worker`` for Inductor's,
    which come and go with compilation: the first run counted them, 14.9 GB after 5 jobs, 8.0 GB later), each with
    its resident memory, whether it holds a CUDA context (:func:`holds_cuda_context`) and its GPU memory where
    nvidia-smi names it (None elsewhere, e.g. in a container whose process ids nvidia-smi does not see)."""
    import psutil

    me = psutil.Process()
    on_gpu = gpu_by_pid()
    table = []
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            rss = process.memory_info().rss / 2**20
            role = "server" if process.pid == me.pid else "child"
            if "compile_worker" in " ".join(process.cmdline()):
                role = "compile worker"
            table.append(
                {
                    "pid": process.pid,
                    "role": role,
                    "rss_mib": rss,
                    "cuda_context": holds_cuda_context(process.pid),
                    "gpu_mib": on_gpu.get(process.pid),
                }
            )
    return table


def holds_cuda_context(pid: int) -> bool | None:
    """Whether process ``pid`` has a GPU's device file (``/dev/nvidiaN``) open or mapped, which a CUDA context does
    and an import of torch does not; None where ``/proc`` cannot tell (not Linux, another user's process)."""
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
        maps = [line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/dev/" in line]
    except OSError:
        return None
    fds = []
    for entry in entries:
        with contextlib.suppress(OSError):  # closed since listed (the listing's own descriptor, for one)
            fds.append(os.readlink(entry))
    return any(name.startswith("/dev/nvidia") and name.removeprefix("/dev/nvidia").isdigit() for name in fds + maps)


def gpu_memory_mib() -> float | None:
    """Memory used on GPU 0 by every process (nvidia-smi), MiB."""
    try:
        return float(nvidia_smi("--query-gpu=memory.used").split()[0])
    except (AttributeError, ValueError, IndexError):
        return None


def gpu_by_pid() -> dict[int, float]:
    """GPU memory per process id as nvidia-smi lists its compute apps, MiB; empty where it names none."""
    out = nvidia_smi("--query-compute-apps=pid,used_memory") or ""
    found = {}
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            pid, used = (float(v) for v in line.split(","))
            found[int(pid)] = used
    return found


class Server:
    """The app under uvicorn in a thread, and an HTTP client for it."""

    def __init__(self, root: Path, config_source: str | None, overrides: dict) -> None:
        import uvicorn

        from img2mesh.serve.app import ServeSettings, create_app
        from img2mesh.testing.oracle_grid import OracleGridPipeline

        settings = ServeSettings(root=root, config_source=config_source, overrides=overrides)
        app = create_app(settings, pipeline=OracleGridPipeline)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> float:
        """Start, wait for the model and the warm-up job; returns seconds to ready."""
        import httpx

        start = time.monotonic()
        self.thread.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        while True:
            try:
                health = self.client.get("/api/health").json()
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if health["status"] == "error":
                raise RuntimeError(health["error"])
            if health["status"] == "ok":
                return time.monotonic() - start
            time.sleep(0.1)

    def submit(self, photo: Path) -> str:
        with photo.open("rb") as f:
            answer = self.client.post("/api/jobs", files={"photo": (photo.name, f, "image/png")})
        answer.raise_for_status()
        return answer.json()["id"]

    def wait(self, job_id: str, period: float = 0.02) -> dict:
        while True:
            job = self.client.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                return job
            time.sleep(period)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)


def run_at_once(server: Server, count: int, offset: int) -> tuple[list[dict], list[float], float]:
    """Submit ``count`` photos from as many threads at once; the jobs, their done times (from the start), wall."""
    jobs: list[dict] = [{}] * count
    done_at = [0.0] * count
    start = time.monotonic()

    def one(i: int) -> None:
        job_id = server.submit(PHOTOS[(offset + i) % len(PHOTOS)])
        jobs[i] = server.wait(job_id, period=0.05)
        done_at[i] = time.monotonic() - start

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return jobs, sorted(done_at), time.monotonic() - start


def throughput(done_at: list[float], wall: float) -> dict:
    n = len(done_at)
    # First done to last done; with fewer than 3 jobs two may finish together, which says nothing of a pace.
    steady = 60 * (n - 1) / (done_at[-1] - done_at[0]) if n > 2 and done_at[-1] > done_at[0] else None
    result = {"jobs": n, "wall_s": wall, "img_per_min": 60 * n / wall, "steady_img_per_min": steady}
    return result | {"median_gap_s": median_gap(done_at), "done_s": done_at}


def median_gap(done_at: list[float]) -> float | None:
    """Median seconds between consecutive jobs done: the pipeline's pace, less moved than "steady" by how the
    first and last jobs end (the last two often finish together)."""
    done_at = sorted(done_at)
    gaps = [b - a for a, b in itertools.pairwise(done_at)]
    return statistics.median(gaps) if len(gaps) > 1 else None


def serve_phases(args, model: str, clock: Clock, result: dict) -> None:
    from img2mesh.commands.options import parse_set_values

    overrides = {"multiview.model": model, "preview.enabled": False, **parse_set_values(args.set)}
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    server = Server(root, args.config, overrides)
    result["ready_s"] = server.start()
    print(f"server ready in {result['ready_s']:.1f} s (model load and warm-up job)", flush=True)
    samples: list[dict] = []
    baseline: dict | None = None
    count = 0

    def sample(label: str) -> dict:
        samples.append(memory_sample(count, label))
        brief = {k: v for k, v in samples[-1].items() if k != "processes"}
        print(f"  memory {label}: {json.dumps(brief)}", flush=True)
        return samples[-1]

    def at_once(phase: str, jobs_count: int, offset: int) -> int:
        """``jobs_count`` photos submitted at once; their throughput goes into ``result[phase]``; returns the count."""
        jobs, done_at, wall = run_at_once(server, jobs_count, offset)
        result[phase] = throughput(done_at, wall) | {"failed": sum(j["state"] != "done" for j in jobs)}
        print(f"  {phase}: {json.dumps(result[phase])}", flush=True)
        time.sleep(0.5)
        return len(jobs)

    try:
        time.sleep(0.5)
        sample("ready (the warm-up job done)")
        if "first" in args.phases and clock.left() > 8 * args.first:
            # The baseline's jobs at once: diffusion beside a fit, the CPU workers' write and the lone last job's
            # write in the fitting process all happen before it, so no first-time step falls after it.
            count += at_once("first", args.first, count)
            baseline = sample(f"after the first {count} jobs, at once (baseline)")
        if "sequential" in args.phases:
            latencies, stages = [], []
            for i in range(args.sequential):
                if clock.left() < 20:
                    break
                start = time.monotonic()
                job = server.wait(server.submit(PHOTOS[i % len(PHOTOS)]))
                latencies.append(time.monotonic() - start)
                stages.append(job["timings"])
                count += 1
                stage_s = " ".join(f"{k} {v:.2f}" for k, v in job["timings"].items())
                state = f"{job['state']} {job['error'] or ''}"
                print(f"  sequential {i}: {latencies[-1]:.2f} s {state} {stage_s}", flush=True)
                if count == 5 and baseline is None:
                    baseline = sample("after 5 jobs, one at a time (baseline)")
            result["sequential"] = {
                "jobs": len(latencies),
                "median_s": statistics.median(latencies) if latencies else None,
                "min_s": min(latencies, default=None),
                "max_s": max(latencies, default=None),
                "latencies_s": latencies,
                "mean_stage_s": {k: statistics.fmean(s[k] for s in stages if k in s) for k in stages[0]}
                if stages
                else {},
            }
        if "burst" in args.phases and clock.left() > 8 * args.burst:
            count += at_once("burst", args.burst, count)
            sample(f"after the burst ({args.burst} at once)")
        if "cold" in args.phases:  # while the server idles: its memory stays on the card, as in real use
            cold_phase(args, model, clock, result)
        if "fill" in args.phases and args.total > count:
            steady = next((result[k]["steady_img_per_min"] for k in ("burst", "first") if k in result), None)
            per_job = 60 / steady if steady else 6
            affordable = (clock.left() - 15) / per_job
            fill = args.total - count if affordable == float("inf") else min(args.total - count, int(affordable))
            # In chunks of --burst with a sample after each: a curve tells a one-off step from a slope.
            fills, walls = [], 0.0
            while fill > 0:
                chunk = min(args.burst, fill)
                jobs, _, wall = run_at_once(server, chunk, count)
                count += len(jobs)
                fill -= chunk
                walls += wall
                fills += [j["state"] != "done" for j in jobs]
                time.sleep(0.5)
                sample(f"after {count} jobs")
                if clock.left() < 15 + per_job * min(args.burst, fill):
                    break
            if fills:
                result["fill"] = {"jobs": len(fills), "wall_s": walls, "failed": sum(fills)}
                result["fill"] |= {"img_per_min": 60 * len(fills) / walls, "steady_img_per_min": None}
        time.sleep(1.0)  # let the last job's workers settle
        sample("end")
        if baseline is None:  # no "first", fewer than 5 jobs one at a time: the first sample at 5 jobs or more
            baseline = next((m for m in samples if m["jobs"] >= 5), None)
            baseline = baseline or next((m for m in samples if m["jobs"] > 0), samples[0])
        result["memory"] = memory_summary(samples, baseline)
        result["jobs_total"] = count
    finally:
        server.stop()


def memory_summary(samples: list[dict], baseline: dict) -> dict:
    """The samples, which one is the baseline, growth from it to the end and to the highest sample after it, and
    per process (by pid) what changed from the baseline to the end: where a step lies."""
    after = samples[samples.index(baseline) :]
    last = samples[-1]

    def growth(value) -> dict:
        return {
            key: (value(key) - baseline[key]) / baseline[key] if baseline.get(key) and value(key) is not None else None
            for key in ("resident_mib", "gpu_mib")
        }

    def peak(key: str) -> float | None:
        values = [m[key] for m in after if m.get(key) is not None]
        return max(values) if values else None

    before = {p["pid"]: p for p in baseline["processes"]}
    changes = []
    for process in last["processes"]:
        old = before.get(process["pid"], {})
        change = {"pid": process["pid"], "role": process["role"], "new": not old}
        change["rss_mib"] = process["rss_mib"] - old.get("rss_mib", 0.0)
        if process["gpu_mib"] is not None:
            change["gpu_mib"] = process["gpu_mib"] - (old.get("gpu_mib") or 0.0)
        change["cuda_context"] = [old.get("cuda_context"), process["cuda_context"]]
        changes.append(change)
    return {
        "samples": samples,
        "baseline": baseline["label"],
        "baseline_jobs": baseline["jobs"],
        "growth": growth(lambda key: last.get(key)),
        "peak_growth": growth(peak),
        "changes_by_process": changes,
    }


def timed(command: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str, dict]:
    """Wall seconds of one process, the end of its output and the timeline it printed (``cold_call.py``,
    ``reference_views.py``), if any."""
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.monotonic() - start
    timeline: dict = {}
    for line in (done.stdout + done.stderr).splitlines():
        with contextlib.suppress(ValueError):
            if line.startswith("timeline "):
                timeline = json.loads(line.removeprefix("timeline ")) | timeline
            elif line.startswith("modules "):
                timeline["modules"] = json.loads(line.removeprefix("modules "))
            elif line.startswith('{"reference"'):
                timeline = json.loads(line)["reference"]
    if done.returncode != 0:
        return seconds, f"exit {done.returncode}: {done.stderr[-600:]}", timeline
    return seconds, done.stdout[-600:], timeline


def cold_phase(args, model: str, clock: Clock, result: dict) -> None:
    """One process per call, as a user runs it, each with its timeline (``cold_call.py``), the reference beside."""
    py = reference_py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="cold-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.cold_deps_only:  # a user's install: img2mesh's dependencies only, none of this machine's other packages
        from dependency_env import dependency_env

        python, linked, missing = dependency_env(work / "venv")
        py, env = str(python), {**os.environ, "PYTHONPATH": str(REPO)}
        result["cold_env"] = {"linked": linked, "not_installed": sorted(missing)}
        print(f"  cold calls in {python}: {len(linked)} distributions; not installed: {sorted(missing)}", flush=True)
        if args.reference:  # the reference also needs torchvision, which would change what our imports load
            reference_py = str(dependency_env(work / "venv-reference", ("torchvision",))[0])
    wrapper = [py, str(REPO / "benchmarks" / "cold_call.py")]
    extra = [arg for value in args.cold_set for arg in value.split()]
    views = ["views", str(PHOTOS[0]), "-o", str(work), "--model", model, "-v", *extra]
    calls = [("python -c pass", [py, "-c", "pass"]), ("img2mesh views PHOTO", [*wrapper, *views])]
    if args.reference:  # right after ours: the pair the issue compares, before anything the deadline could cut
        reference = [reference_py, str(REPO / "benchmarks" / "reference_views.py"), "--pipeline", str(args.reference)]
        reference += ["--model", model, "--photo", str(PHOTOS[0]), "--out", str(work / "reference.png")]
        calls.append(("reference pipeline (load, 75 steps, save)", reference))
    recon = ["recon", str(GRID), "--export", str(work / "m.glb"), "-v", *extra]
    calls.append(("img2mesh recon GRID --export", [*wrapper, *recon]))
    if args.cold_variants:
        calls.append(("img2mesh views PHOTO --compile off", [*wrapper, *views, "--compile", "off"]))
        graphs_off = [*recon, "--set", "recon.cuda_graphs=false"]
        calls.append(("img2mesh recon GRID --export, recon.cuda_graphs=false", [*wrapper, *graphs_off]))
    if args.cold_baseline:  # the same calls from another checkout (the code before a change), same run, same card
        before = [py, str(args.cold_baseline.resolve() / "benchmarks" / "cold_call.py")]
        calls.append(("img2mesh recon GRID --export (baseline)", [*before, *recon]))
        calls.append(("img2mesh views PHOTO (baseline)", [*before, *views]))
    if args.cold_variants:
        calls.append(("img2mesh views PHOTO, cuDNN autotune", [*wrapper, "--cudnn-benchmark", *views]))
    rows = []
    if args.cold_warm_cache:  # the page cache a user's earlier commands leave: the first call pays no disk reads
        # cuDNN's and cuBLAS's libraries load at their first use, not at import: one fp16 convolution and GEMM.
        touch = "import torch, diffusers, transformers, trimesh, scipy.spatial\n"
        touch += "if torch.cuda.is_available():\n"
        touch += "    x = torch.randn(2, 4, 64, 64, device='cuda', dtype=torch.half)\n"
        touch += "    w = torch.randn(8, 4, 3, 3, device='cuda', dtype=torch.half)\n"
        touch += "    (torch.nn.functional.conv2d(x, w, padding=1) @ x[0, 0]).sum().item()\n"
        for python in dict.fromkeys([py, reference_py]):
            subprocess.run([python, "-c", touch], env=env)
    for name, command in calls:
        if clock.left() < (30 if "views" in name or "reference" in name else 15):
            rows.append({"call": name, "seconds": None, "output": "skipped: deadline"})
            continue
        call_env = env
        if "(baseline)" in name:  # its own img2mesh and recon first on the path
            paths = [str(args.cold_baseline.resolve()), env["PYTHONPATH"].partition(os.pathsep)[2]]
            call_env = {**env, "PYTHONPATH": os.pathsep.join(paths)}
        seconds, output, timeline = timed(command, env=call_env, cwd=REPO)
        failed = output.startswith("exit ")
        lines = output.strip().splitlines()[-4:]
        rows.append({"call": name, "seconds": seconds, "timeline": timeline, "output": lines, "failed": failed})
        print(f"  cold {name}: {seconds:.2f} s{' FAILED' if failed else ''} {json.dumps(timeline)}", flush=True)
    result["cold"] = rows


def batch_phase(args, model: str, clock: Clock, result: dict) -> None:
    if clock.left() < 15 + 8 * args.burst:
        result["batch"] = {"skipped": "deadline"}
        return
    out = Path(tempfile.mkdtemp(prefix="batch-")) / "batch.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "batch_throughput.py"),
        "--items",
        str(args.burst),
        "--runners",
        "local",
        "--model",
        model,
        "--json",
        str(out),
    ]
    command += ["--config", args.config] if args.config else []
    for value in args.set:
        command += ["--set", value]
    seconds, output, _ = timed(command)
    try:
        row = json.loads(out.read_text())[0] if out.exists() else None
    except (ValueError, IndexError, KeyError):
        row = None
    keep = ("items", "done", "wall_s", "first_done_s", "img_per_min", "steady_img_per_min", "done_s")
    result["batch"] = {k: row.get(k) for k in keep} if row else {"error": output[-400:]}
    if row and row.get("done_s"):
        result["batch"]["median_gap_s"] = median_gap(row["done_s"])
    print(f"  batch: {json.dumps(result['batch'])} ({seconds:.1f} s with start-up)", flush=True)


def table(result: dict) -> str:
    def num(value, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    lines = [f"Server ready (model load + warm-up job): {num(result.get('ready_s'), ' s')}", ""]
    seq = result.get("sequential")
    if seq:
        lines += [
            "| photos one at a time | median s | min s | max s | mean s per stage (server) |",
            "| ---: | ---: | ---: | ---: | --- |",
            f"| {seq['jobs']} | {num(seq['median_s'])} | {num(seq['min_s'])} | {num(seq['max_s'])} | "
            + ", ".join(f"{k} {v:.2f}" for k, v in seq["mean_stage_s"].items())
            + " |",
            "",
        ]
    rows = [(name, result[name]) for name in ("first", "burst", "fill", "batch") if isinstance(result.get(name), dict)]
    if rows:
        lines += [
            "| photos at once | jobs | wall s | img/min | steady img/min | median s between jobs done |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        labels = {
            "first": "server, its first jobs",
            "burst": "server",
            "fill": "server (more)",
            "batch": "batch runner (own process, model load included in wall)",
        }
        for name, row in rows:
            if "wall_s" in row:
                jobs = row.get("jobs", row.get("done"))
                lines.append(
                    f"| {labels[name]} | {jobs} | {num(row['wall_s'])} | {num(row['img_per_min'])} "
                    f"| {num(row['steady_img_per_min'])} | {num(row.get('median_gap_s'))} |"
                )
            else:
                why = f"not run ({row['skipped']})" if "skipped" in row else json.dumps(row)[:200]
                lines.append(f"| {labels[name]} | {why} | | | | |")
        lines.append("")
    memory = result.get("memory")
    if memory:
        lines += [
            "| memory, MiB | jobs | resident (server + workers) | GPU (card) | server CUDA reserved / allocated "
            "| processes with a CUDA context | GPU per process (nvidia-smi) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for m in memory["samples"]:
            cuda = f"{num(m.get('server_reserved_mib'))} / {num(m.get('server_allocated_mib'))}"
            per = ", ".join(f"{p['role']} {p['pid']} {p['gpu_mib']:.0f}" for p in m["processes"] if p["gpu_mib"])
            label = (
                m["label"]
                if "baseline" in m["label"] or m["label"] != memory["baseline"]
                else m["label"] + " (baseline)"
            )
            lines.append(
                f"| {label} | {m['jobs']} | {num(m['resident_mib'])} | {num(m['gpu_mib'])} | {cuda} "
                f"| {m['cuda_processes']} | {per or 'not named'} |"
            )
        for name, g in (
            ("growth, baseline → last", memory["growth"]),
            ("growth, baseline → peak", memory["peak_growth"]),
        ):
            pct = {k: num(None if g[k] is None else 100 * g[k], " %") for k in ("resident_mib", "gpu_mib")}
            lines.append(f"| {name} | | {pct['resident_mib']} | {pct['gpu_mib']} | | | |")
        lines.append("")
        moved = [
            c
            for c in memory["changes_by_process"]
            if c["new"] or abs(c["rss_mib"]) > 50 or abs(c.get("gpu_mib") or 0) > 50
        ]
        moved += [c for c in memory["changes_by_process"] if c not in moved and len(set(c["cuda_context"])) > 1]
        if moved:
            lines.append(
                "Baseline → last, per process: "
                + "; ".join(
                    f"{c['role']} {c['pid']}{' (new)' if c['new'] else ''} resident {c['rss_mib']:+.0f}"
                    + (f", GPU {c['gpu_mib']:+.0f}" if "gpu_mib" in c else "")
                    + (
                        f", CUDA context {c['cuda_context'][0]} → {c['cuda_context'][1]}"
                        if len(set(c["cuda_context"])) > 1
                        else ""
                    )
                    for c in moved
                )
                + " (MiB)."
            )
            lines.append("")
    if result.get("cold"):
        if result.get("cold_env"):
            missing = ", ".join(result["cold_env"]["not_installed"]) or "none"
            lines += [f"Cold calls in img2mesh's dependencies only (not installed on this machine: {missing}).", ""]
        lines += ["| one cold process | wall s | timeline (s since start) |", "| --- | ---: | --- |"]
        for row in result["cold"]:
            marks = {k: v for k, v in (row.get("timeline") or {}).items() if isinstance(v, float | int)}
            timeline = ", ".join(f"{k} {v:.2f}" for k, v in marks.items())
            if row.get("failed"):  # a wall that is not the call's work
                timeline = f"failed: {row['output'][-1] if row['output'] else ''}"
            lines.append(f"| `{row['call']}` | {num(row['seconds'])} | {timeline} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Zero123++ folder; default: build random weights of --size")
    parser.add_argument("--size", default="full", choices=["full", "tiny"], help="random weights to build")
    parser.add_argument("--config", help="config preset or YAML for the server (default: the defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="server config override")
    parser.add_argument(
        "--cold-set", action="append", default=[], help="extra arguments of the cold CLI calls ('--config cpu')"
    )
    parser.add_argument("--reference", type=Path, help="folder of the reference pipeline.py: its cold call too")
    parser.add_argument(
        "--cold-variants",
        action="store_true",
        help="also views with cuDNN autotuning and with --compile off, recon eager",
    )
    parser.add_argument(
        "--cold-warm-cache", action="store_true", help="import the libraries once, untimed, before the cold calls"
    )
    parser.add_argument(
        "--cold-baseline", type=Path, help="another checkout (the code before a change): its recon and views cold too"
    )
    parser.add_argument(
        "--cold-deps-only",
        action="store_true",
        help="cold calls in a venv of img2mesh's installed dependencies only (benchmarks/dependency_env.py)",
    )
    parser.add_argument("--first", type=int, default=5, help="the server's first jobs, at once: the memory baseline")
    parser.add_argument("--sequential", type=int, default=10, help="photos one at a time")
    parser.add_argument("--burst", type=int, default=10, help="photos submitted at once")
    parser.add_argument("--total", type=int, default=50, help="jobs in the server's life (memory growth)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--deadline", type=float, help="seconds for the whole script; later phases are skipped")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.phases = [p.strip() for p in args.phases.split(",")]
    clock = Clock(args.deadline)

    model = args.model
    if model is None:
        from img2mesh.testing.random_weights import save_random_zero123pp

        start = time.monotonic()
        model = str(save_random_zero123pp(Path(tempfile.mkdtemp(prefix="weights-")) / "zero123pp", size=args.size))
        print(f"random {args.size} weights built in {time.monotonic() - start:.1f} s", flush=True)

    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    result: dict = {
        "card": card,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "commit": os.environ.get("IMG2MESH_COMMIT") or commit.stdout.strip(),  # a copy without .git names its own
        "command": " ".join(sys.argv),
        "weights": f"{args.size}-size random" if args.model is None else args.model,
    }
    server_phases = [p for p in args.phases if p in SERVER_PHASES]
    batch_first = "batch" in args.phases and (
        not server_phases or args.phases.index("batch") < args.phases.index(server_phases[0])
    )
    try:
        if batch_first:  # before the server starts: the card is the batch runner's alone, as the server's will be
            batch_phase(args, model, clock, result)
        if server_phases:
            serve_phases(args, model, clock, result)
        elif "cold" in args.phases:
            cold_phase(args, model, clock, result)
        if "batch" in args.phases and not batch_first:
            batch_phase(args, model, clock, result)
    finally:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    text = table(result)
    print(text)
    if args.write_results:
        head = (
            f"## `img2mesh serve` latency, throughput, memory; cold CLI calls (`benchmarks/serve_latency.py`)\n\n"
            f"{result['card']}, {result['weights']} weights, commit {result['commit']}, {result['date']} UTC.\n"
            f"Command: `{result['command']}`\n"
        )
        replace_section(BEGIN, END, head + "\n" + text)


if __name__ == "__main__":
    main()
