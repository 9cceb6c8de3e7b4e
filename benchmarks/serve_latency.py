"""``img2mesh serve`` under load, and where the seconds of one cold ``img2mesh recon`` / ``img2mesh views`` call go.

A warm server (uvicorn on 127.0.0.1 in this process, the HTTP client in threads) with full-size random Zero123++
weights (built here unless ``--model`` names a folder; they cost exactly what the real ones cost) and the pipeline of
the tests: the real diffusion call, then Spot's oracle grid ``examples/spot_views.png`` for the reconstruction (random
weights draw noise, which nothing can mesh). Phases, in this order, each skipped when ``--deadline`` would be passed:

1. ``sequential``: photos one at a time, photo → job done (GLB written) as the client sees it; median and spread.
2. ``burst``: ``--burst`` photos submitted at once: wall time and images per minute (all, and steady: first done to
   last done).
3. ``cold`` (while the server idles): one process per call as a user runs it, each through ``cold_call.py`` (its
   timeline: imports, CUDA context, model load, first denoising step, the rest): ``img2mesh recon GRID --export``,
   ``img2mesh views PHOTO``, and with ``--reference`` the public reference pipeline's cold call beside them
   (``reference_views.py``); ``--cold-variants`` adds views with ``--compile off`` and with cuDNN autotuning and
   recon without CUDA graphs; ``--cold-baseline DIR`` the recon and views calls of another checkout (before a change).
4. ``fill``: more photos, ``--burst`` at a time, until ``--total`` jobs ran; resident memory (server and its worker
   processes), GPU memory (nvidia-smi, the whole card) and the server's own CUDA allocator after job 5, after the
   burst and after each chunk: a curve, which tells a one-off step from a slope.
5. ``batch``: ``benchmarks/batch_throughput.py`` on ``--burst`` photos with the same weights and config (one process,
   its own model load), for the throughput comparison.

    python benchmarks/serve_latency.py --phases sequential,burst,fill,batch --json out.json   # a CUDA machine
    python benchmarks/serve_latency.py --phases cold --reference REF_DIR --json cold.json
    python benchmarks/serve_latency.py --size tiny --config cpu --set multiview.steps=2 --sequential 2 --burst 2 \\
        --total 5 --phases sequential,burst,fill
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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
PHASES = ("sequential", "burst", "cold", "fill", "batch")


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


def gpu_memory_mib() -> float | None:
    """Memory used on GPU 0 by every process (nvidia-smi), MiB."""
    try:
        return float(nvidia_smi("--query-gpu=memory.used").split()[0])
    except (AttributeError, ValueError, IndexError):
        return None


def memory_sample(jobs: int) -> dict:
    """Resident memory (server and the runner's workers; Inductor's compile workers apart), GPU memory (the whole
    card, per process where nvidia-smi names them) and the server process's own CUDA allocator, MiB."""
    sample = {"jobs": jobs, **resident_mib(), "gpu_mib": gpu_memory_mib(), "gpu_by_process_mib": gpu_by_process()}
    import torch

    if torch.cuda.is_available():
        sample["server_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
        sample["server_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
    return sample


def resident_mib() -> dict:
    """Resident memory of this process and every process it started, MiB: ``resident_mib`` counts the server and
    the runner's workers; ``compiler_mib`` Inductor's compile workers, which come and go with compilation (the
    first run counted them: 14.9 GB after 5 jobs, 8.0 GB later)."""
    import psutil

    me = psutil.Process()
    total = compiler = 0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            rss = process.memory_info().rss
            if "compile_worker" in " ".join(process.cmdline()):
                compiler += rss
            else:
                total += rss
    return {"resident_mib": total / 2**20, "compiler_mib": compiler / 2**20}


def gpu_by_process() -> dict[str, float] | None:
    """GPU memory per process (nvidia-smi's compute apps), keyed ``server``, ``child <pid>`` or ``other <pid>``;
    None where nvidia-smi names no process (some containers)."""
    import psutil

    out = nvidia_smi("--query-compute-apps=pid,used_memory")
    if out is None:
        return None
    me = psutil.Process()
    children = {p.pid for p in me.children(recursive=True)}
    found = {}
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            pid, used = (int(float(v)) for v in line.split(","))
            role = "server" if pid == me.pid else f"child {pid}" if pid in children else f"other {pid}"
            found[role] = float(used)
    return found or None


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
    return {"jobs": n, "wall_s": wall, "img_per_min": 60 * n / wall, "steady_img_per_min": steady}


def serve_phases(args, model: str, clock: Clock, result: dict) -> None:
    from img2mesh.commands.options import parse_set_values

    overrides = {"multiview.model": model, "preview.enabled": False, **parse_set_values(args.set)}
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    server = Server(root, args.config, overrides)
    result["ready_s"] = server.start()
    print(f"server ready in {result['ready_s']:.1f} s (model load and warm-up job)", flush=True)
    memory: dict[str, dict] = {}
    count = 0
    try:
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
                if count == 5:
                    memory["after_5"] = memory_sample(count)
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
            jobs, done_at, wall = run_at_once(server, args.burst, count)
            count += len(jobs)
            result["burst"] = throughput(done_at, wall) | {"failed": sum(j["state"] != "done" for j in jobs)}
            print(f"  burst: {json.dumps(result['burst'])}", flush=True)
            # A step up here (every CPU worker has had its first item) is told apart from a slope by the end sample.
            memory["after_burst"] = memory_sample(count)
        if "cold" in args.phases:  # while the server idles: its memory stays on the card, as in real use
            cold_phase(args, model, clock, result)
        if count < 5:
            memory["after_5"] = memory_sample(count) | {"note": f"after {count} jobs"}
        if "fill" in args.phases and args.total > count:
            per_job = (
                60 / result["burst"]["steady_img_per_min"] if result.get("burst", {}).get("steady_img_per_min") else 6
            )
            affordable = (clock.left() - 15) / per_job
            fill = args.total - count if affordable == float("inf") else min(args.total - count, int(affordable))
            # In chunks of --burst with a sample after each: a curve tells a one-off step from a slope.
            curve, fills, walls = [], [], 0.0
            while fill > 0:
                chunk = min(args.burst, fill)
                jobs, done_at, wall = run_at_once(server, chunk, count)
                count += len(jobs)
                fill -= chunk
                walls += wall
                fills += [j["state"] != "done" for j in jobs]
                time.sleep(0.5)
                curve.append(memory_sample(count))
                print(f"  fill: {count} jobs, {json.dumps(curve[-1])}", flush=True)
                if clock.left() < 15 + per_job * min(args.burst, fill):
                    break
            if fills:
                result["fill"] = {"jobs": len(fills), "wall_s": walls, "failed": sum(fills)}
                result["fill"] |= {"img_per_min": 60 * len(fills) / walls, "steady_img_per_min": None}
                memory["curve"] = curve
        time.sleep(1.0)  # let the last job's workers settle
        memory["end"] = memory_sample(count)
        first, last = memory["after_5"], memory["end"]
        memory["growth"] = {
            key: (last[key] - first[key]) / first[key] if first.get(key) and last.get(key) else None
            for key in ("resident_mib", "gpu_mib")
        }
        result["memory"] = memory
        result["jobs_total"] = count
    finally:
        server.stop()


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
    py = sys.executable
    wrapper = [py, str(REPO / "benchmarks" / "cold_call.py")]
    work = Path(tempfile.mkdtemp(prefix="cold-"))
    extra = [arg for value in args.cold_set for arg in value.split()]
    views = ["views", str(PHOTOS[0]), "-o", str(work), "--model", model, "-v", *extra]
    calls = [("python -c pass", [py, "-c", "pass"]), ("img2mesh views PHOTO", [*wrapper, *views])]
    if args.reference:  # right after ours: the pair the issue compares, before anything the deadline could cut
        reference = [py, str(REPO / "benchmarks" / "reference_views.py"), "--pipeline", str(args.reference)]
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.cold_warm_cache:  # the page cache a user's earlier commands leave: the first call pays no disk reads
        # cuDNN's and cuBLAS's libraries load at their first use, not at import: one fp16 convolution and GEMM.
        touch = "import torch, diffusers, transformers, trimesh, scipy.spatial\n"
        touch += "if torch.cuda.is_available():\n"
        touch += "    x = torch.randn(2, 4, 64, 64, device='cuda', dtype=torch.half)\n"
        touch += "    w = torch.randn(8, 4, 3, 3, device='cuda', dtype=torch.half)\n"
        touch += "    (torch.nn.functional.conv2d(x, w, padding=1) @ x[0, 0]).sum().item()\n"
        subprocess.run([py, "-c", touch], env=env)
    for name, command in calls:
        if clock.left() < (30 if "views" in name or "reference" in name else 15):
            rows.append({"call": name, "seconds": None, "output": "skipped: deadline"})
            continue
        call_env = env
        if "(baseline)" in name:  # its own img2mesh and recon first on the path
            paths = [str(args.cold_baseline.resolve()), os.environ.get("PYTHONPATH", "")]
            call_env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        seconds, output, timeline = timed(command, env=call_env, cwd=REPO)
        rows.append(
            {"call": name, "seconds": seconds, "timeline": timeline, "output": output.strip().splitlines()[-4:]}
        )
        print(f"  cold {name}: {seconds:.2f} s {json.dumps(timeline)}", flush=True)
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
    keep = ("items", "done", "wall_s", "first_done_s", "img_per_min", "steady_img_per_min")
    result["batch"] = {k: row[k] for k in keep} if row else {"error": output[-400:]}
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
    rows = [(name, result[name]) for name in ("burst", "fill", "batch") if isinstance(result.get(name), dict)]
    if rows:
        lines += [
            "| photos at once | jobs | wall s | img/min | steady img/min |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, row in rows:
            label = {"burst": "server", "fill": "server (more)", "batch": "batch runner (own process)"}[name]
            if "wall_s" in row:
                jobs = row.get("jobs", row.get("done"))
                lines.append(
                    f"| {label} | {jobs} | {num(row['wall_s'])} | {num(row['img_per_min'])} "
                    f"| {num(row['steady_img_per_min'])} |"
                )
            else:
                why = f"not run ({row['skipped']})" if "skipped" in row else json.dumps(row)[:200]
                lines.append(f"| {label} | {why} | | | |")
        lines.append("")
    memory = result.get("memory")
    if memory:
        g = memory["growth"]
        pct = {k: num(None if g[k] is None else 100 * g[k], " %") for k in ("resident_mib", "gpu_mib")}
        samples = [("after 5 jobs", memory["after_5"])]
        samples += [("after the burst", memory["after_burst"])] if "after_burst" in memory else []
        samples += [(f"after {c['jobs']} jobs", c) for c in memory.get("curve", [])[:-1]]
        samples += [("after the last job", memory["end"])]
        lines += [
            "| memory, MiB | jobs | resident (server + workers) | GPU (card) | server CUDA reserved / allocated |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, m in samples:
            cuda = f"{num(m.get('server_reserved_mib'))} / {num(m.get('server_allocated_mib'))}"
            lines.append(f"| {label} | {m.get('jobs', 5)} | {num(m['resident_mib'])} | {num(m['gpu_mib'])} | {cuda} |")
        lines += [f"| growth, 5 → last | | {pct['resident_mib']} | {pct['gpu_mib']} | |", ""]
    if result.get("cold"):
        lines += ["| one cold process | wall s | timeline (s since start) |", "| --- | ---: | --- |"]
        for row in result["cold"]:
            marks = {k: v for k, v in (row.get("timeline") or {}).items() if isinstance(v, float | int)}
            timeline = ", ".join(f"{k} {v:.2f}" for k, v in marks.items())
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
    try:
        if {"sequential", "burst", "fill"} & set(args.phases):
            serve_phases(args, model, clock, result)
        elif "cold" in args.phases:
            cold_phase(args, model, clock, result)
        if "batch" in args.phases:
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
