"""The first compilation of the UNet's blocks spread over worker processes that fill Inductor's on-disk cache.

Why. Regional compilation (``fast_step.compile_blocks``) turns the two passes of a step into ~60 graphs (each
distinct block structure at each resolution: resnets, and transformers split around their eager self-attention).
Compiled lazily, one after the other as the first step reaches each block, they took 160 s on an H100 machine
with 16 cores mostly idle: compiling a graph is single-threaded Python (tracing, lowering, code generation), only
its Triton kernels build in a pool. With a filled cache the same warm-up took 19.5 s. So before the first compiled
step, :func:`precompile` starts a few worker processes; each builds the same UNet with uninitialised weights
(compiled code depends on shapes, layouts and dtypes, never on values), compiles only its share of the blocks and
runs one step at the real shapes, which leaves those graphs and kernels in the shared cache folder. Then the main
process compiles every block from the cache. Blocks that compile to the same graphs (same kind, resolution level
and channels) go to the same worker, and the shares are balanced by an estimate of their graphs. Measured on an
H100 machine (benchmarks/RESULTS.md, run 5): 8 workers in 64 s, then 22 s in the main process, 86 s in all.

Workers cost GPU memory while they run (each holds its own uninitialised UNet and one step's activations, ~2x the
UNet's weights plus a CUDA context), so their number is capped by the free memory as well as the cores; below two
workers, or on anything but CUDA with Inductor, nothing is started. A marker file per (model configuration, input
shapes, versions, source of the step) in the cache folder records a finished precompilation, so later runs skip
the workers. A worker that fails or runs out of time only costs speed: the main process then compiles what is
missing itself, as it would without workers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: Upper bound on worker processes (beyond it the main process's cached pass dominates).
MAX_WORKERS = 8
#: A worker needs its UNet (weights + the stacked projection copies) and one step's activations: this many times
#: the weights' bytes, plus :data:`WORKER_OVERHEAD` for the CUDA context and library workspaces.
WORKER_MEMORY_FACTOR = 2.0
WORKER_OVERHEAD = 1 << 30
#: Seconds the main process waits for the workers before compiling the rest itself.
WORKER_TIMEOUT = 900
#: Estimated graphs per pass: a resnet block is one graph; a transformer splits into four around self-attention.
_COST = {"ResnetBlock2D": 1, "Transformer2DModel": 3}


def block_groups(unet: torch.nn.Module, names: Sequence[str]) -> list[tuple[int, list[str]]]:
    """The compiled blocks ``names`` grouped by what they compile to, with each group's estimated cost.

    A block's graphs depend on its kind, channels and the resolution it runs at (its level in the UNet), so blocks
    sharing those are compiled once for all of them and belong to one worker.
    """
    modules = dict(unet.named_modules())
    downs, ups = len(getattr(unet, "down_blocks", [])), len(getattr(unet, "up_blocks", []))
    groups: dict[tuple, list[str]] = {}
    for name in names:
        block = modules[name]
        section, _, rest = name.partition(".")
        index = rest.split(".")[0]
        if section == "down_blocks" and index.isdigit():
            level = int(index)
        elif section == "up_blocks" and index.isdigit():
            level = ups - 1 - int(index)
        elif section == "mid_block":
            level = downs - 1
        else:
            level = name  # anything else: a group of its own
        groups.setdefault((type(block).__name__, level, _channels(block)), []).append(name)
    return [(2 * _COST.get(kind, 1), members) for (kind, _, _), members in groups.items()]


def _channels(block: torch.nn.Module) -> tuple[int, ...]:
    """Input and output channels of a resnet block (norm1, conv2), or a transformer's (its input norm)."""
    parts = [getattr(block, attr, None) for attr in ("norm1", "conv2", "norm")]
    return tuple(part.weight.shape[0] for part in parts if getattr(part, "weight", None) is not None)


def assign(groups: list[tuple[int, list[str]]], workers: int) -> list[list[str]]:
    """Groups dealt to ``workers`` shares, largest first, each to the least loaded share; empty shares dropped."""
    shares: list[tuple[int, list[str]]] = [(0, []) for _ in range(workers)]
    for cost, members in sorted(groups, key=lambda g: -g[0]):
        load, share = min(shares, key=lambda s: s[0])
        shares.remove((load, share))
        shares.append((load + cost, share + members))
    return [share for _, share in shares if share]


def worker_count(unet: torch.nn.Module, device: torch.device, groups: int) -> int:
    """How many workers this machine can run next to the main process: cores (two each, one for the worker and
    one for its kernel builds), free GPU memory, and the number of groups."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = min(MAX_WORKERS, cores // 2, groups)
    if device.type == "cuda":
        weights = sum(p.numel() * p.element_size() for p in unet.parameters())
        free, _ = torch.cuda.mem_get_info(device)
        count = min(count, int(free // (WORKER_MEMORY_FACTOR * weights + WORKER_OVERHEAD)))
    return max(count, 0)


def _describe(t: torch.Tensor | None) -> dict | None:
    if t is None:
        return None
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _marker_key(spec: dict) -> str:
    """What a precompilation depends on: the spec (model configuration, shapes, dtype, mode), the versions, the
    card, and the source of the code that runs the step."""
    from img2mesh.zero123pp import attention, fast_step

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for module in (attention, fast_step, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    import diffusers

    digest.update(f"{torch.__version__} {diffusers.__version__} {sys.version}".encode())
    if torch.cuda.is_available():
        digest.update(torch.cuda.get_device_name().encode())
    return digest.hexdigest()[:24]


def precompile(
    denoiser,
    unet: torch.nn.Module,
    names: Sequence[str],
    inputs: tuple,
    backend: str = "inductor",
    workers: int | None = None,
    timeout: float = WORKER_TIMEOUT,
) -> int:
    """Fill Inductor's cache with the graphs of the compiled blocks ``names`` for these denoiser ``inputs`` (sample,
    timestep, encoder states, reference sample or None), using worker processes; returns how many ran (0: none
    were needed or possible). ``workers``: how many (None: :func:`worker_count`, and none below two).
    ``denoiser`` is the :class:`~img2mesh.zero123pp.attention.ReferenceUNet`, as
    configured for the fast path (stacked projections, side stream)."""
    from img2mesh.zero123pp.fast_step import compile_cache_dir

    sample, _, encoder_hidden_states, reference_sample = inputs
    device = sample.device
    groups = block_groups(unet, names)
    if workers is None:
        workers = worker_count(unet, device, len(groups))
        if workers < 2:  # one worker would only move the whole compilation into another process
            return 0
    if workers < 1:
        return 0
    shares = assign(groups, workers)
    spec = {
        "unet_class": f"{type(unet).__module__}.{type(unet).__name__}",
        "unet_config": dict(unet.config),
        "dtype": str(next(unet.parameters()).dtype).removeprefix("torch."),
        "sample": _describe(sample),
        "encoder_hidden_states": _describe(encoder_hidden_states),
        "reference_sample": _describe(reference_sample),
        "fused_projections": denoiser._cross_stacked is not None,
        "side_stream": denoiser.bank.stream is not None,
        "backend": backend,
    }
    cache = compile_cache_dir()
    marker = cache / "img2mesh_precompiled" / f"{_marker_key(spec)}.json"
    if marker.exists():
        return 0
    marker.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    threads = max(1, (os.cpu_count() or 2) // len(shares))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": str(threads)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    if device.type == "cuda" and device.index is not None:
        spec["device"] = f"cuda:{device.index}"
    else:
        spec["device"] = str(device)
    processes = []
    logs = marker.parent / "logs"  # the last precompilation's worker logs (what each compiled, and how long)
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="img2mesh_precompile_") as folder:
        for i, share in enumerate(shares):
            path = Path(folder) / f"worker{i}.json"
            path.write_text(json.dumps({**spec, "blocks": share, "spawned": time.time()}, default=str))
            log = open(logs / f"worker{i}.log", "w+")  # noqa: SIM115  (closed below, after the wait)
            cmd = [sys.executable, "-m", "img2mesh.zero123pp.precompile", str(path)]
            processes.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        failed = 0
        for i, (process, log) in enumerate(processes):
            try:
                code = process.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            logger.info(
                "precompile worker %d: exit %s, waited for until %.1f s", i, code, time.perf_counter() - started
            )
            if code:
                failed += 1
                log.seek(0)
                tail = log.read().strip().splitlines()[-1:] or ["?"]
                logger.warning("precompile worker failed (exit %s): %s", code, tail[0][:300])
            log.close()
    seconds = time.perf_counter() - started
    logger.info("precompiled %d blocks in %d workers in %.1f s (%d failed)", len(names), len(shares), seconds, failed)
    if not failed:
        marker.write_text(json.dumps({"seconds": seconds, "workers": len(shares), "blocks": len(names)}))
    return len(shares)


def run_worker(spec: dict) -> None:
    """One worker: build the UNet of ``spec`` with uninitialised weights, compile its share of the blocks as the
    main process does, and run one step at the main process's shapes (which compiles, and caches, its graphs)."""

    def since_spawn(what: str) -> None:  # the worker's timeline, for the log (start-up vs compilation)
        if "spawned" in spec:
            print(f"{time.time() - spec['spawned']:6.1f} s after spawn: {what}", flush=True)

    since_spawn("torch imported")
    from img2mesh.zero123pp.attention import ReferenceUNet
    from img2mesh.zero123pp.fast_step import FastDenoiser, compile_blocks

    since_spawn("diffusers imported")
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    module, _, name = spec["unet_class"].rpartition(".")
    unet_class = getattr(importlib.import_module(module), name)
    with torch.device("meta"):
        unet = unet_class.from_config(spec["unet_config"])
    unet = torch.nn.Module.to(unet, dtype).to_empty(device=device).eval()  # in its dtype from the start
    unet.to(memory_format=torch.channels_last)
    denoiser = ReferenceUNet(unet)
    if spec["fused_projections"]:
        denoiser.fuse_projections()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in the main process
        if spec["side_stream"]:
            denoiser.bank.stream = torch.cuda.Stream(device)
    compile_blocks(unet, backend=spec["backend"], only=spec["blocks"])
    since_spawn("UNet built on the device")

    def tensor(description):
        if description is None:
            return None
        return torch.randn(description["shape"], device=device, dtype=getattr(torch, description["dtype"]))

    step = FastDenoiser(denoiser, unet, "blocks")
    timestep = torch.tensor(500.0, device=device)
    started = time.perf_counter()
    with torch.no_grad():
        step._step(
            tensor(spec["sample"]), timestep, tensor(spec["encoder_hidden_states"]), tensor(spec["reference_sample"])
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    since_spawn("step compiled and run")
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
    print(f"compiled {len(spec['blocks'])} blocks in {seconds:.1f} s, peak GPU memory {peak:.2f} GB", flush=True)
    print(torch._dynamo.utils.compile_times(repr="str", aggregate=True), flush=True)


if __name__ == "__main__":
    run_worker(json.loads(Path(sys.argv[1]).read_text()))
