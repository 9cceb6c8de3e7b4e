"""Zero123++ sampling speed per fast-path mode: ms per step, totals, warm-up, peak memory, difference from eager.

Builds full-size random weights of the real architecture (they cost exactly what the real ones cost) unless
``--model`` names a folder, then runs every mode in a fresh process (so warm-up is a first run's): the compiled mode
first with an empty compile cache ("cold"), then once more on the folder the cold run filled ("cached"), and with
``--portable`` once more on an empty folder holding only the artifacts file the cold run saved (a new machine).
The last row is the low-memory mode (model CPU offload, eager) under a simulated card of ``--card-gb`` GB
(``torch.cuda.set_per_process_memory_fraction``). ``--deadline S`` bounds the whole run: each process gets at most
the time left, a mode that would start with too little is skipped, and a process cut off still reports its
warm-up if it got that far.

    python benchmarks/multiview_speed.py --write-results         # on a CUDA machine
    python benchmarks/multiview_speed.py --size tiny --device cpu --modes off --steps 2,3   # smoke test

Columns: "step ms" is one denoiser call (reference + main pass) timed alone with CUDA events (median of 20);
"ms/step" is the end-to-end slope (total(75) − total(28)) / 47, which includes the scheduler and the reference
noising; totals include the encoders and the VAE decode; "max diff" is the largest absolute difference of the
75-step output image from eager's (0-255 scale) with the same seeds. Graphed modes also report "1-stream ms": the
step captured again with the reference pass inline instead of on its side stream (what the concurrency gains; the
benchmark switches it from outside, through the reference bank's stream).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from results_file import replace_section  # noqa: E402  (benchmarks/, the script's folder)

BEGIN, END = "<!-- multiview_speed:begin -->", "<!-- multiview_speed:end -->"


def condition_image(size: int = 320):
    """A deterministic RGBA object on transparency (no file needed): shaded disc with a stripe."""
    import numpy as np
    import PIL.Image

    yy, xx = np.mgrid[:size, :size] / size - 0.5
    disc = (xx**2 + yy**2) < 0.16
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = (200 * (0.5 + xx)).clip(0, 255)
    rgba[..., 1] = (180 * (0.5 - yy)).clip(0, 255)
    rgba[..., 2] = np.where(np.abs(xx) < 0.05, 230, 60)
    rgba[..., 3] = disc * 255
    return PIL.Image.fromarray(rgba, "RGBA")


# ----------------------------------------------------------------------------------------------- child process


def run_child(args) -> dict:
    """One mode in this (fresh) process: load, enable, warm up, time, save outputs; returns the measurements."""
    import logging

    import torch

    from img2mesh.zero123pp.fast_step import GraphedStep, enable_fast_path
    from img2mesh.zero123pp.pipeline import Zero123PlusPipeline
    from img2mesh.zero123pp.precompile import ARTIFACTS, compile_cache_dir

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("img2mesh.zero123pp").setLevel(logging.INFO)  # the fast path's choices, the compile cache
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and args.card_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.card_gb * 1e9 / total), torch.cuda.current_device())
    dtype = torch.float16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    t0 = time.perf_counter()
    pipe = Zero123PlusPipeline.from_pretrained(args.model, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    load_s = time.perf_counter() - t0
    mode = enable_fast_path(pipe, args.child, offload=args.offload)
    image = condition_image()
    steps_short, steps_long = args.steps

    def sample(steps: int, output_type: str = "pt"):
        torch.manual_seed(0)
        generator = torch.Generator(device).manual_seed(0)
        sync()
        start = time.perf_counter()
        out = pipe(image, num_inference_steps=steps, generator=generator, output_type=output_type)
        sync()
        return out.images, time.perf_counter() - start

    _, first_s = sample(steps_short)  # the first run pays compilation, cuDNN autotuning and graph capture
    result = {"mode": args.child, "resolved": mode, "load_s": load_s, "first_s": first_s}
    artifacts = getattr(pipe.denoiser, "artifacts", None)
    if artifacts is not None:  # the compiled mode: what the warm-up found in the compile cache and left there
        result["precompile_workers"], result["precompile_s"] = pipe.denoiser.precompiled
        result["artifacts_loaded"] = len(pipe.denoiser.loaded)
        result["artifacts_mb"] = artifacts.stat().st_size / 1e6 if artifacts.exists() else 0.0
    print("PARTIAL " + json.dumps(result), flush=True)  # the warm-up, should the rest be cut off
    if mode != "off":  # where the first run's compilation went (dynamo, AOT, Inductor), and the workers' logs
        print(torch._dynamo.utils.compile_times(repr="str", aggregate=True), flush=True)
        logs = sorted((compile_cache_dir() / ARTIFACTS / "logs").glob("worker*.log"))
        for log in logs[: result.get("precompile_workers", 0)]:  # this run's workers (none: left by an earlier run)
            text = log.read_text()  # its timeline (head) and compile times (tail)
            print(f"--- {log.name}\n" + (text if len(text) < 4000 else text[:1500] + "\n[...]\n" + text[-2500:]))
    for steps in (steps_short, steps_long):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        images, total = sample(steps)
        result[f"total_{steps}"] = total
        if cuda:
            result[f"peak_gb_{steps}"] = torch.cuda.max_memory_allocated(device) / 1e9
        torch.save(images.float().cpu(), Path(args.work) / f"{args.tag}_{steps}.pt")
    result["warmup_s"] = first_s - result[f"total_{steps_short}"]
    result["ms_per_step"] = (
        1e3 * (result[f"total_{steps_long}"] - result[f"total_{steps_short}"]) / (steps_long - steps_short)
    )
    if cuda and not args.offload:
        result["step_ms"] = time_denoiser(pipe, device, dtype)
        if args.profile:
            profile_denoiser(pipe, device, dtype)
        if args.attribute:
            attribute_kernels(pipe, device, dtype, trace=args.out / f"{args.tag}_step_trace.json" if args.out else None)
        if mode != "off" and not pipe.denoiser.failed:  # reference pass inline, before the main pass
            pipe.denoiser.denoiser.bank.stream = None
            pipe.denoiser.graphed = GraphedStep(pipe.denoiser.step)
            result["step_ms_serial"] = time_denoiser(pipe, device, dtype)
    result["fell_back"] = bool(getattr(pipe.denoiser, "failed", False))
    return result


def time_denoiser(pipe, device, dtype, repeats: int = 20) -> float:
    """Median time of one denoiser call (both UNet passes) at the real shapes, CUDA events."""
    import torch

    g = torch.Generator(device).manual_seed(1)
    d = pipe.unet.config.cross_attention_dim
    sample = torch.randn(2, 4, 120, 80, generator=g, device=device, dtype=dtype)
    reference = torch.randn(2, 4, 64, 64, generator=g, device=device, dtype=dtype)
    embeds = torch.randn(2, 77, d, generator=g, device=device, dtype=dtype)
    t = torch.tensor(500.0, device=device)
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.no_grad():  # as in the pipeline: a different grad mode would recompile and recapture
            pipe.denoiser(sample, t, embeds, reference)
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def profile_denoiser(pipe, device, dtype) -> None:
    """Print the GPU kernels of 5 denoiser calls, by total time (where a step's time goes)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    d = pipe.unet.config.cross_attention_dim
    sample = torch.randn(2, 4, 120, 80, device=device, dtype=dtype)
    reference = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    embeds = torch.randn(2, 77, d, device=device, dtype=dtype)
    t = torch.tensor(500.0, device=device)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            pipe.denoiser(sample, t, embeds, reference)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))


def attribute_kernels(
    pipe, device, dtype, trace: Path | None = None, copies_only_rows: int = 40, rows: int = 45
) -> None:
    """Profile one step WITHOUT its CUDA graph (kernels then correlate with the CPU ops that launched them) and
    print where its kernels come from: per (kernel, launching op < its parents, input shapes/strides, source line),
    count and GPU time; first the generic ATen elementwise kernels (copies and broadcasts), then everything."""
    import collections
    import re

    import torch
    from torch.profiler import ProfilerActivity, profile

    step = getattr(pipe.denoiser, "step", pipe.denoiser)  # the fast path's step as compiled, but not graphed
    d = pipe.unet.config.cross_attention_dim
    sample = torch.randn(2, 4, 120, 80, device=device, dtype=dtype)
    reference = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    embeds = torch.randn(2, 77, d, device=device, dtype=dtype)
    t = torch.tensor(500.0, device=device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        step(sample, t, embeds, reference)
        sync()
        with profile(
            activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])],
            record_shapes=True,
            with_stack=True,
        ) as prof:
            step(sample, t, embeds, reference)
            sync()
    if trace is not None:  # chrome trace (gzipped): input strides of every op, kernel ↔ launch correlation
        import gzip
        import shutil

        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        trace.unlink()

    def short(name: str) -> str:
        functor = re.findall(r"at::native::(?!elementwise_kernel|gpu_kernel_impl|vectorized|unrolled)(\w+)", name)
        return (name.split("<")[0].split("(")[0] + (f"[{functor[0]}]" if functor else ""))[:80]

    def source(evt) -> str:
        frames = [f for f in (evt.stack or []) if "img2mesh" in f or "diffusers" in f or "torchinductor" in f]
        return " | ".join(frames[:3])[:300]

    def chain(evt) -> str:
        names, p = [], evt
        while p is not None and len(names) < 5:
            names.append(p.name)
            p = p.cpu_parent
        return " < ".join(names)

    by_key: dict[tuple, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for evt in prof.events():
        for kernel in getattr(evt, "kernels", []):
            strides = getattr(evt, "structured_input_strides", None) or ""
            key = (short(kernel.name), chain(evt), str(evt.input_shapes)[:160], str(strides)[:160], source(evt))
            by_key[key][0] += 1
            by_key[key][1] += kernel.duration
    total = sum(v[1] for v in by_key.values())
    print(f"ATTRIBUTION: one non-graphed step, {sum(v[0] for v in by_key.values())} kernels, {total / 1e3:.2f} ms")
    generic = [(k, v) for k, v in by_key.items() if k[0].startswith("void at::native::elementwise_kernel")]
    for title, items, limit in (("generic elementwise", generic, copies_only_rows), ("all", by_key.items(), rows)):
        items = sorted(items, key=lambda kv: -kv[1][1])
        print(f"--- {title}: {sum(v[0] for _, v in items)} kernels, {sum(v[1] for _, v in items) / 1e3:.2f} ms")
        for (name, ops, shapes, strides, src), (count, us) in items[:limit]:
            print(
                f"{count:4d} {us:9.1f} us  {name}\n        op: {ops}\n        in: {shapes} {strides}\n        at: {src}"
            )


# ----------------------------------------------------------------------------------------------- parent process


def spawn(args, mode: str, tag: str, cache: Path, offload: bool = False, card_gb: float = 0.0) -> dict:
    timeout = args.child_timeout
    if args.deadline:
        left = args.deadline - (time.perf_counter() - args.started) - 5  # 5 s for the table
        if left < 20:
            return {"mode": mode, "tag": tag, "error": "skipped: --deadline reached"}
        timeout = min(timeout, left)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--tag",
        tag,
        "--model",
        str(args.model),
        "--work",
        str(args.work),
    ]
    cmd += ["--device", args.device, "--steps", ",".join(map(str, args.steps)), "--card-gb", str(card_gb)]
    cmd += ["--offload"] if offload else []
    cmd += ["--profile"] if args.profile and "graphs" in mode else []
    cmd += ["--attribute", "--out", str(args.out)] if args.attribute and mode != "off" and tag.endswith("_cold") else []
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, error = proc.stdout, proc.stderr, None
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, error = _text(exc.stdout), _text(exc.stderr), f"cut off after {timeout:.0f} s"
    with open(Path(args.out) / "children.log", "a") as log:
        log.write(f"===== {tag}: {' '.join(cmd)}\n{stdout}{stderr}\n")
    lines = stdout.splitlines()
    finished = [ln[len("RESULT ") :] for ln in lines if ln.startswith("RESULT ")]
    partial = [ln[len("PARTIAL ") :] for ln in lines if ln.startswith("PARTIAL ")]
    if error is None and (proc.returncode or not finished):
        error = (stderr.strip().splitlines() or ["?"])[-1][:200]
    result = json.loads((finished or partial or ['{"first_s": null}'])[-1])
    if error is not None:  # what it measured before it stopped (its first call, with the warm-up), and why
        result = {"first_s": result.get("first_s"), "error": error}
    result.update(mode=mode, tag=tag, process_s=time.perf_counter() - started)
    return result


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def max_diff(args, tag: str, steps: int) -> float | None:
    import torch

    path, eager = Path(args.work) / f"{tag}_{steps}.pt", Path(args.work) / f"off_{steps}.pt"
    if not (path.exists() and eager.exists()):
        return None
    return 255 * (torch.load(path) - torch.load(eager)).abs().max().item()


def environment(args) -> dict:
    import diffusers
    import torch

    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(card=props.name, memory_gb=round(props.total_memory / 1e9, 1), cuda=torch.version.cuda)
    else:
        info.update(card=platform.processor() or "cpu")
    return info


def table(rows: list[dict], args) -> str:
    s, long = args.steps
    head = "| mode | warm-up s | step ms | 1-stream ms | ms/step | "
    head += f"{s} steps s | {long} steps s | peak GB | max diff ({long}) |"
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        name = r["label"]
        if "error" in r:
            first = r.get("first_s")
            first = f"first {s}-step call {first:.1f} s, then " if first is not None else ""
            lines.append(f"| {name} | {first}failed: {r['error']} |" + " |" * 7)
            continue

        def f(key, fmt="{:.1f}", r=r):
            value = r.get(key)
            return "–" if value is None else fmt.format(value)

        resolved = "" if r["resolved"] == r["mode"] else f" → {r['resolved']}"
        fell = " (fell back to eager)" if r.get("fell_back") else ""
        if "artifacts_loaded" in r:  # how the compiled mode's warm-up went: workers, or the artifacts file
            fell += f" ({r['precompile_workers']} workers, {r['artifacts_loaded']} artifacts loaded, "
            fell += f"{r['artifacts_mb']:.1f} MB file)"
        lines.append(
            f"| {name}{resolved}{fell} | {f('warmup_s')} | {f('step_ms')} | {f('step_ms_serial')} | "
            f"{f('ms_per_step')} | "
            f"{f(f'total_{s}', '{:.2f}')} | {f(f'total_{long}', '{:.2f}')} | {f(f'peak_gb_{long}', '{:.2f}')} | "
            f"{f('diff', '{:.2g}')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="Zero123++ folder (default: build random weights of --size)")
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--modes", default="off,graphs,blocks+graphs", help="comma-separated fast-path modes")
    parser.add_argument("--steps", default="28,75", help="two step counts: short,long")
    parser.add_argument("--card-gb", type=float, default=8.0, help="simulated card size of the low-memory row")
    parser.add_argument("--no-low-memory", action="store_true", help="skip the low-memory (offload) row")
    parser.add_argument("--out", type=Path, help="folder for results.json and the logs (default: a temporary one)")
    parser.add_argument("--work", type=Path, help="folder for the sampled outputs compared (default: a temporary one)")
    parser.add_argument("--child-timeout", type=int, default=300, help="seconds one mode's process may take")
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take (weights included)")
    parser.add_argument(
        "--portable", action="store_true", help="compiled mode: also a run on an empty cache holding only the artifacts"
    )
    parser.add_argument("--write-results", action="store_true", help="replace this benchmark's section of RESULTS.md")
    parser.add_argument("--profile", action="store_true", help="log the kernel-time table of graphed modes' step")
    parser.add_argument(
        "--attribute", action="store_true", help="cold compiled runs: attribute a non-graphed step's kernels to ops"
    )
    parser.add_argument("--no-cached", action="store_true", help="compiled modes: only the cold-cache run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.started = time.perf_counter()
    args.steps = [int(x) for x in args.steps.split(",")]
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return

    args.out = args.out or Path(tempfile.mkdtemp(prefix="multiview_speed_"))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="multiview_outputs_"))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from img2mesh.testing.random_weights import save_random_zero123pp

        started = time.perf_counter()
        args.model = save_random_zero123pp(Path(tempfile.mkdtemp(prefix="zero123pp_random_")), size=args.size)
        print(f"random {args.size} weights built in {time.perf_counter() - started:.0f} s: {args.model}", flush=True)
    caches = Path(tempfile.mkdtemp(prefix="inductor_"))
    rows = []

    def run(mode: str, tag: str, cache: Path, label: str) -> None:
        rows.append({**spawn(args, mode, tag, cache), "label": label})
        print(json.dumps(rows[-1]), flush=True)

    modes = ["off", *[m for m in args.modes.split(",") if m != "off"]]
    for mode in modes:
        tag = mode.replace("+", "_")
        if mode != "blocks+graphs":
            run(mode, tag, caches / tag, mode)
            continue
        # A cold run on an empty cache folder, then one on the folder it filled.
        run(mode, tag + "_cold", caches / "blocks", f"{mode}, cold cache")
        if not args.no_cached:
            run(mode, tag, caches / "blocks", f"{mode}, cached")
    if args.portable and "blocks+graphs" in modes:  # last: an empty folder holding only the artifacts file saved
        from img2mesh.zero123pp.precompile import ARTIFACTS

        (caches / "portable" / ARTIFACTS).mkdir(parents=True)
        for saved in (caches / "blocks" / ARTIFACTS).glob("*.bin"):
            shutil.copy(saved, caches / "portable" / ARTIFACTS)
        run("blocks+graphs", "blocks_graphs_portable", caches / "portable", "blocks+graphs, artifacts file only")
    if args.device.startswith("cuda") and not args.no_low_memory:
        row = spawn(args, "off", "offload_capped", caches / "off", offload=True, card_gb=args.card_gb)
        rows.append({**row, "label": f"low memory (offload, eager), capped at {args.card_gb:g} GB"})
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        if "error" not in r:
            r["diff"] = max_diff(args, r["tag"], args.steps[1])

    env = environment(args)
    command = "python benchmarks/multiview_speed.py " + " ".join(sys.argv[1:])
    dtype = "fp16" if args.device.startswith("cuda") else "fp32"
    text = (
        f"## Zero123++ fast path (multiview_speed.py)\n\n{env['date']}, {env['card']}, torch {env['torch']}, "
        f"diffusers {env['diffusers']}, Python {env['python']}, {args.size} random weights, {dtype}, 640×960, "
        f"CFG on. Command: `{command}`.\n\n{table(rows, args)}\n"
    )
    print(text)
    (args.out / "results.json").write_text(json.dumps({"env": env, "rows": rows, "section": text}, indent=1))
    if args.write_results:
        replace_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
