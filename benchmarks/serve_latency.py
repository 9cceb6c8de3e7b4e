"""``img2mesh serve`` under load, and where the seconds of one cold ``img2mesh recon`` / ``img2mesh views`` call go.

A warm server (uvicorn on 127.0.0.1 in this process, the HTTP client in threads) with full-size random Zero123++
weights (built here unless ``--model`` names a folder; they cost exactly what the real ones cost) and the pipeline of
the tests: the real diffusion call, then Spot's oracle grid ``examples/spot_views.png`` for the reconstruction (random
weights draw noise, which nothing can mesh). Phases, in this order, each skipped when ``--deadline`` would be passed:

1. ``sequential``: photos one at a time, photo → job done (GLB written) as the client sees it; median and spread.
2. ``burst``: ``--burst`` photos submitted at once: wall time and images per minute (all, and steady: first done to
   last done).
3. ``cold`` (while the server idles): one process per call as a user runs it: ``img2mesh recon GRID --export``,
   ``img2mesh views PHOTO`` (wall), beside probes of what they pay before any work: ``import torch``, the CUDA
   context, the imports of the diffusion pipeline and of the reconstruction.
4. ``fill``: more photos at once until ``--total`` jobs ran; resident memory (server and its worker processes) and
   GPU memory (nvidia-smi, the whole card) after job 5 and after the last job, and their growth.
5. ``batch``: ``benchmarks/batch_throughput.py`` on ``--burst`` photos with the same weights and config (one process,
   its own model load), for the throughput comparison.

    python benchmarks/serve_latency.py --set multiview.compile=graphs --json out.json --write-results   # a CUDA machine
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


def gpu_memory_mib() -> float | None:
    """Memory used on GPU 0 by every process (nvidia-smi), MiB."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def resident_mib() -> float:
    """Resident memory of this process and every process it started (the runner's workers), MiB."""
    import psutil

    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += process.memory_info().rss
    return total / 2**20


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
    steady = 60 * (n - 1) / (done_at[-1] - done_at[0]) if n > 1 and done_at[-1] > done_at[0] else None
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
                print(f"  sequential {i}: {latencies[-1]:.2f} s {job['state']} {job['error'] or ''}", flush=True)
                if count == 5:
                    memory["after_5"] = {"resident_mib": resident_mib(), "gpu_mib": gpu_memory_mib()}
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
            memory["after_burst"] = {"resident_mib": resident_mib(), "gpu_mib": gpu_memory_mib(), "jobs": count}
        if "cold" in args.phases:  # while the server idles: its memory stays on the card, as in real use
            cold_phase(args, model, clock, result)
        if count < 5:
            memory["after_5"] = {"resident_mib": resident_mib(), "gpu_mib": gpu_memory_mib()}
            memory["after_5"]["note"] = f"after {count} jobs"
        if "fill" in args.phases and args.total > count:
            per_job = (
                60 / result["burst"]["steady_img_per_min"] if result.get("burst", {}).get("steady_img_per_min") else 6
            )
            affordable = (clock.left() - 15) / per_job
            fill = args.total - count if affordable == float("inf") else min(args.total - count, int(affordable))
            if fill > 0:
                jobs, done_at, wall = run_at_once(server, fill, count)
                count += len(jobs)
                result["fill"] = throughput(done_at, wall) | {"failed": sum(j["state"] != "done" for j in jobs)}
                print(f"  fill: {json.dumps(result['fill'])}", flush=True)
        time.sleep(1.0)  # let the last job's workers settle
        memory["end"] = {"resident_mib": resident_mib(), "gpu_mib": gpu_memory_mib(), "jobs": count}
        first, last = memory["after_5"], memory["end"]
        memory["growth"] = {
            key: (last[key] - first[key]) / first[key] if first.get(key) and last.get(key) else None
            for key in ("resident_mib", "gpu_mib")
        }
        result["memory"] = memory
        result["jobs_total"] = count
    finally:
        server.stop()


def timed(command: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        return seconds, f"exit {done.returncode}: {done.stderr[-600:]}"
    return seconds, done.stdout[-600:] + "\n".join(line for line in done.stderr.splitlines() if "loaded" in line)


def cold_phase(args, model: str, clock: Clock, result: dict) -> None:
    """One process per call, as a user runs it, and what each pays before any work."""
    py = sys.executable
    cli = [py, "-c", "from img2mesh.cli import main; main()"]
    work = Path(tempfile.mkdtemp(prefix="cold-"))
    extra = [arg for value in args.cold_set for arg in value.split()]
    calls = [
        ("python -c pass", [py, "-c", "pass"]),
        ("import torch", [py, "-c", "import torch"]),
        (
            "import torch + CUDA context",
            [py, "-c", "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"],
        ),
        ("import img2mesh.zero123pp.pipeline", [py, "-c", "import img2mesh.zero123pp.pipeline"]),
        ("import recon.reconstruct", [py, "-c", "import recon.reconstruct"]),
        (
            "img2mesh recon GRID --export",
            [*cli, "recon", str(GRID), "--export", str(work / "m.glb"), "-v", *extra],
        ),
        (
            "img2mesh views PHOTO",
            [*cli, "views", str(PHOTOS[0]), "-o", str(work), "--model", model, "-v", *extra],
        ),
    ]
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name, command in calls:
        if clock.left() < (45 if "views" in name else 20):
            rows.append({"call": name, "seconds": None, "output": "skipped: deadline"})
            continue
        seconds, output = timed(command, env=env, cwd=REPO)
        rows.append({"call": name, "seconds": seconds, "output": output.strip().splitlines()[-3:] if output else []})
        print(f"  cold {name}: {seconds:.2f} s", flush=True)
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
    seconds, output = timed(command)
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
        a, b, g = memory["after_5"], memory["end"], memory["growth"]
        m = memory.get("after_burst", {})
        pct = {k: num(None if g[k] is None else 100 * g[k], " %") for k in ("resident_mib", "gpu_mib")}
        lines += [
            "| memory | after 5 jobs | after the burst | after the last job | growth (5 → last) |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| resident (server + workers), MiB | {num(a['resident_mib'])} | {num(m.get('resident_mib'))} "
            f"| {num(b['resident_mib'])} | {pct['resident_mib']} |",
            f"| GPU (whole card), MiB | {num(a['gpu_mib'])} | {num(m.get('gpu_mib'))} | {num(b['gpu_mib'])} "
            f"| {pct['gpu_mib']} |",
            f"| jobs | 5 | {m.get('jobs', 'n/a')} | {b['jobs']} | |",
            "",
        ]
    if result.get("cold"):
        lines += ["| one cold process | wall s |", "| --- | ---: |"]
        lines += [f"| `{row['call']}` | {num(row['seconds'])} |" for row in result["cold"]]
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
