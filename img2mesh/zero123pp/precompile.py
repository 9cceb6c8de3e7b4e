"""The first compilation of the UNet's blocks shared by this process and worker processes that fill Inductor's
on-disk cache.

Why. Regional compilation (``fast_step.compile_blocks``) turns the two passes of a step into ~60 graphs (each
distinct block structure at each resolution: resnets, and transformers split around their eager self-attention).
Compiled lazily, one after the other as the first step reaches each block, they took 160 s on an H100 machine
with 16 cores mostly idle: compiling a graph is single-threaded Python (tracing, lowering, code generation), only
its Triton kernels build in a pool. With a filled cache the same warm-up takes ~17 s. So before the first compiled
step, :func:`precompile` starts worker processes; each builds the same UNet (compiled code depends on shapes,
layouts and dtypes, never on values), and the block groups (blocks that compile to the same graphs: same kind,
resolution level and channels) are a queue, largest first: whoever takes a group, a worker or this process,
compiles it and runs one step at the real shapes, which leaves its graphs and kernels in the shared cache folder.
This process starts at once while the workers spend ~15 s importing torch and diffusers and building their UNet;
afterwards it loads each group a worker finishes from the cache while the others still compile, so little is left
to do when the last worker ends. A queue instead of fixed shares, because graph costs vary (one worker's Inductor
time was 9 s, another's 22 s with estimated shares). Measured on an H100 machine (benchmarks/RESULTS.md): first
warm-up 86 s with fixed shares and this process idle (run 5), 48 s with the queue (run 6: this process compiled 3
of the 19 groups, the queue was done and loaded after 46 s).

Workers cost GPU memory while they run (each holds its own UNet and one step's activations, ~2x the UNet's
weights plus a CUDA context), so their number is capped by the free memory as well as the cores; on anything but
CUDA with Inductor, nothing is started. A marker file per (model configuration, input shapes, versions, source of
the step) in the cache folder records a finished precompilation, so later runs skip the workers. A worker that
fails or runs out of time only costs speed: this process then compiles what is missing itself, as it would without
workers.
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
from collections.abc import Callable, Sequence
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
#: Estimated graphs per pass, to order the queue (largest first): a resnet block is one graph; a transformer splits
#: into several around self-attention.
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
    from img2mesh.zero123pp import attention, fast_step, fused_blocks

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for module in (attention, fast_step, fused_blocks, sys.modules[__name__]):
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
    run_step: Callable[[], object],
    backend: str = "inductor",
    workers: int | None = None,
    timeout: float = WORKER_TIMEOUT,
) -> int:
    """Compile the blocks ``names`` for these denoiser ``inputs`` (sample, timestep, encoder states, reference
    sample or None) with the help of worker processes that fill Inductor's cache; returns how many workers ran
    (0: none were needed or possible). ``workers``: how many (None: :func:`worker_count`).

    The block groups (:func:`block_groups`, largest first) are a queue that the workers and this process take
    from: whoever claims a group compiles it and runs one step. This process starts at once (the workers first
    spend ~10-20 s starting), then loads each group the workers finish from the cache while the others still
    compile, so at the end only the last group is left to load. ``run_step`` runs one step of the fast path's
    denoiser at the real inputs (its output is discarded); the blocks of groups not compiled yet run eagerly
    meanwhile. ``denoiser`` is the :class:`~img2mesh.zero123pp.attention.ReferenceUNet`, as configured
    for the fast path (stacked projections, side stream)."""
    from img2mesh.zero123pp.fast_step import PRECOMPILED_MARKERS, compile_cache_dir

    sample, timestep, encoder_hidden_states, reference_sample = inputs
    device = sample.device
    groups = sorted(block_groups(unet, names), key=lambda group: -group[0])
    if workers is None:
        workers = worker_count(unet, device, len(groups))
    if workers < 1:
        return 0
    spec = {
        "unet_class": f"{type(unet).__module__}.{type(unet).__name__}",
        "unet_config": dict(unet.config),
        "dtype": str(next(unet.parameters()).dtype).removeprefix("torch."),
        "sample": _describe(sample),
        "timestep": _describe(timestep) if isinstance(timestep, torch.Tensor) else None,
        "encoder_hidden_states": _describe(encoder_hidden_states),
        "reference_sample": _describe(reference_sample),
        "fused_projections": denoiser._cross_stacked is not None,
        "side_stream": denoiser.bank.stream is not None,
        "backend": backend,
        "groups": [members for _, members in groups],
    }
    cache = compile_cache_dir()
    marker = cache / PRECOMPILED_MARKERS / f"{_marker_key(spec)}.json"
    if marker.exists():
        return 0
    marker.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    threads = max(1, cores // (workers + 1))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": str(threads)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    if device.type == "cuda" and device.index is not None:
        spec["device"] = f"cuda:{device.index}"
    else:
        spec["device"] = str(device)
    processes = []
    logs = marker.parent / "logs"  # the last precompilation's worker logs (what each compiled, and when)
    logs.mkdir(exist_ok=True)
    for old in logs.glob("worker*.log"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="img2mesh_precompile_") as folder:
        claims = Path(folder)
        path = claims / "spec.json"
        path.write_text(json.dumps({**spec, "claims": folder, "spawned": time.time()}, default=str))
        for i in range(workers):
            log = open(logs / f"worker{i}.log", "w+")  # noqa: SIM115  (closed below, after the wait)
            cmd = [sys.executable, "-m", "img2mesh.zero123pp.precompile", str(path)]
            processes.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        try:
            own = _compile_here(unet, spec["groups"], claims, run_step, processes, started + timeout, threads)
            logger.info("precompile: this process compiled %d of %d block groups itself", own, len(groups))
        finally:
            failed = _wait(processes, started + timeout)
    seconds = time.perf_counter() - started
    logger.info("precompiled %d blocks with %d workers in %.1f s (%d failed)", len(names), workers, seconds, failed)
    if not failed:
        marker.write_text(json.dumps({"seconds": seconds, "workers": workers, "blocks": len(names)}))
    return workers


def _claim(claims: Path, index: int) -> bool:
    """Take block group ``index`` off the queue; False if another process has it (atomic file creation)."""
    try:
        os.close(os.open(claims / f"{index}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _mark_done(claims: Path, index: int) -> None:
    """Group ``index`` is compiled and its graphs are in the cache (written whole, then renamed into place)."""
    partial = claims / f"{index}.done.partial.{os.getpid()}"
    partial.touch()
    partial.rename(claims / f"{index}.done")


def _compile_here(unet, groups, claims: Path, run_step, processes, deadline: float, threads: int) -> int:
    """This process's part of the queue: compile the groups it claims, then load the workers' groups from the
    cache as each is done; returns how many groups it compiled itself. Blocks are swapped to eager (their
    compiled wrapper set aside) until their group's turn, and all of them are compiled again on return."""
    import torch._inductor.config

    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        torch._inductor.config.compile_threads = threads  # share the cores with the workers' kernel builds
    modules = dict(unet.named_modules())
    names = [name for members in groups for name in members]
    wrapped = {name: modules[name]._compiled_call_impl for name in names}

    def enable(index: int) -> None:
        for name in groups[index]:
            modules[name]._compiled_call_impl = wrapped[name]

    for name in names:
        modules[name]._compiled_call_impl = None
    own, theirs = 0, []
    try:
        for index in range(len(groups)):
            if _claim(claims, index):
                enable(index)
                run_step()
                own += 1
            else:
                theirs.append(index)
        while theirs and time.perf_counter() < deadline:
            ready = [index for index in theirs if (claims / f"{index}.done").exists()]
            if ready:
                for index in ready:
                    enable(index)
                run_step()  # compiles them from the cache
                theirs = [index for index in theirs if index not in ready]
            elif all(process.poll() is not None for process, _ in processes):
                break  # a worker failed: its group compiles at the next step, in this process
            else:
                time.sleep(0.05)
    finally:
        for name in names:
            modules[name]._compiled_call_impl = wrapped[name]
    return own


def _wait(processes, deadline: float) -> int:
    """Wait for the workers (killing those past ``deadline``) and close their logs; returns how many failed."""
    failed = 0
    for process, log in processes:
        try:
            code = process.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code:
            failed += 1
            log.seek(0)
            tail = log.read().strip().splitlines()[-1:] or ["?"]
            logger.warning("precompile worker failed (exit %s): %s", code, tail[0][:300])
        log.close()
    return failed


def run_worker(spec: dict) -> None:
    """One worker: build the UNet of ``spec`` with uninitialised weights, then until the queue is empty claim a
    group of blocks, compile it as the main process does and run one step at the main process's shapes (which
    compiles its graphs into the shared cache)."""

    def since_spawn(what: str) -> None:  # the worker's timeline, for the log (start-up vs compilation)
        print(f"{time.time() - spec['spawned']:6.1f} s after spawn: {what}", flush=True)

    since_spawn("torch imported")
    from torch._dynamo.backends.registry import lookup_backend

    from img2mesh.zero123pp.attention import ReferenceUNet
    from img2mesh.zero123pp.fast_step import FastDenoiser, compile_block, prepare_blocks

    since_spawn("diffusers imported")
    lookup_backend(spec["backend"])  # an unknown backend fails the worker now, not at its first claim
    device = torch.device(spec["device"])
    if device.type == "cpu":  # the processes share the cores: one thread pool each would oversubscribe them
        torch.set_num_threads(int(os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", "1")))
    dtype = getattr(torch, spec["dtype"])
    module, _, name = spec["unet_class"].rpartition(".")
    unet_class = getattr(importlib.import_module(module), name)
    with torch.device("meta"):
        unet = unet_class.from_config(spec["unet_config"])
    unet = torch.nn.Module.to(unet, dtype).to_empty(device=device).eval()  # in its dtype from the start
    with torch.no_grad():  # any values compile alike, but uninitialised memory can hold denormals (slow on CPUs)
        for tensor in (*unet.parameters(), *unet.buffers()):
            tensor.zero_()
    unet.to(memory_format=torch.channels_last)
    denoiser = ReferenceUNet(unet)
    if spec["fused_projections"]:
        denoiser.fuse_projections()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in the main process
        if spec["side_stream"]:
            denoiser.bank.stream = torch.cuda.Stream(device)
    prepare_blocks(unet)
    since_spawn("UNet built on the device")

    def tensor(description):
        if description is None:
            return None
        return torch.randn(description["shape"], device=device, dtype=getattr(torch, description["dtype"]))

    step = FastDenoiser(denoiser, unet, "blocks")
    t = spec["timestep"] or {"shape": [], "dtype": "float32"}  # None: the main process passed a Python number
    timestep = torch.full(t["shape"], 500.0, dtype=getattr(torch, t["dtype"]), device=device)
    inputs = (tensor(spec["sample"]), timestep, tensor(spec["encoder_hidden_states"]), tensor(spec["reference_sample"]))
    modules = dict(unet.named_modules())
    claims = Path(spec["claims"])
    for index, members in enumerate(spec["groups"]):
        if not _claim(claims, index):
            continue
        started = time.perf_counter()
        for name in members:
            compile_block(modules[name], spec["backend"])
        with torch.no_grad():
            step._step(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _mark_done(claims, index)
        since_spawn(f"group {index} ({len(members)} blocks) compiled in {time.perf_counter() - started:.1f} s")
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
    print(f"peak GPU memory {peak:.2f} GB", flush=True)
    print(torch._dynamo.utils.compile_times(repr="str", aggregate=True), flush=True)


if __name__ == "__main__":
    run_worker(json.loads(Path(sys.argv[1]).read_text()))
