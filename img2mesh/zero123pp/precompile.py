"""The first compilation of the UNet's blocks, shared by this process and worker processes.

Why. The compiled mode turns a step into ~60 graphs (each distinct block structure at each resolution, transformers
split around their eager self-attention). Compiling a graph is single-threaded Python (tracing, lowering, code
generation), so compiled one after the other at the first step they take minutes, while a later run reads them
back from Inductor's on-disk cache in well under half a minute. Inductor's cache is the whole mechanism; what this
module adds is parallelism for the first fill: worker processes build the same UNet (compiled code depends on
shapes, layouts and dtypes, never on values), and the block groups (blocks that compile to the same graphs: same
kind, resolution level and channels) are a queue, largest first. Whoever takes a group, a worker or this process,
compiles it and runs one step at the real shapes, which leaves its graphs in the shared cache; this process loads
each group a worker finishes while the others still compile (benchmarks/RESULTS.md has the timings).

Workers cost GPU memory while they run (each holds its own UNet and one step's activations), so their number is
capped by the free memory as well as the cores. A marker file per (model configuration, input shapes, versions,
source of the step) in the cache folder records a finished precompilation, so later runs start no worker. A worker
that fails or runs out of time only costs speed: this process then compiles what is missing itself.
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

from img2mesh.zero123pp import unet_patches

logger = logging.getLogger(__name__)

#: Folder of :func:`compile_cache_dir` where finished first compilations leave their marker.
MARKERS = "img2mesh_precompiled"
#: Upper bound on worker processes (beyond it this process's cached pass dominates).
MAX_WORKERS = 8
#: GPU memory a worker needs: this many times the UNet's weights (its own copy and one step's activations), plus
#: :data:`WORKER_OVERHEAD` for the CUDA context and library workspaces.
WORKER_MEMORY_FACTOR = 2.0
WORKER_OVERHEAD = 1 << 30
#: Seconds this process waits for the workers before compiling the rest itself.
WORKER_TIMEOUT = 900
#: Estimated graphs per block, to order the queue: a transformer splits into several around self-attention.
_COST = {"ResnetBlock2D": 1, "Transformer2DModel": 3}
#: The modules whose source decides what a step compiles to (part of the marker's key).
_STEP_SOURCES = ("attention.py", "fast_step.py", "unet_patches.py", "precompile.py")


def compile_cache_dir() -> Path:
    """Inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``<user cache>/img2mesh/torchinductor``
    (set in the environment before the first compilation, so compiled kernels survive the process)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "img2mesh" / "torchinductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def precompiled_before() -> bool:
    """Whether a finished first compilation left its marker in :func:`compile_cache_dir` (any model and shapes: a
    hint, not a guarantee that this model's graphs are cached)."""
    return any((compile_cache_dir() / MARKERS).glob("*.json"))


def block_groups(unet: torch.nn.Module, names: Sequence[str]) -> list[tuple[int, list[str]]]:
    """The compiled blocks ``names`` grouped by what they compile to (kind, resolution level, channels), each with
    its estimated cost."""
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
        parts = [getattr(block, attr, None) for attr in ("norm1", "conv2", "norm")]
        channels = tuple(part.weight.shape[0] for part in parts if getattr(part, "weight", None) is not None)
        groups.setdefault((type(block).__name__, level, channels), []).append(name)
    return [(2 * _COST.get(kind, 1), members) for (kind, _, _), members in groups.items()]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


def worker_count(unet: torch.nn.Module, device: torch.device, groups: int) -> int:
    """How many workers fit beside this process: two cores each, the free GPU memory, the number of groups."""
    count = min(MAX_WORKERS, _cores() // 2, groups)
    if device.type == "cuda":
        weights = sum(p.numel() * p.element_size() for p in unet.parameters())
        free, _ = torch.cuda.mem_get_info(device)
        count = min(count, int(free // (WORKER_MEMORY_FACTOR * weights + WORKER_OVERHEAD)))
    return max(count, 0)


def _describe(t) -> dict | None:
    if not isinstance(t, torch.Tensor):
        return None
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _marker_key(spec: dict) -> str:
    """What a precompilation depends on: the spec, the versions, the card and the source of the step."""
    import diffusers

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for name in _STEP_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update(f"{torch.__version__} {diffusers.__version__} {sys.version}".encode())
    if torch.cuda.is_available():
        digest.update(torch.cuda.get_device_name().encode())
    return digest.hexdigest()[:24]


def precompile(
    denoiser,
    unet: torch.nn.Module,
    inputs: tuple,
    run_step: Callable[[], object],
    backend: str = "inductor",
    workers: int | None = None,
    timeout: float = WORKER_TIMEOUT,
) -> int:
    """Compile every block of ``unet`` (:func:`unet_patches.compiled_block_names`, patched and not compiled yet)
    for these denoiser ``inputs`` (sample, timestep, encoder states, reference sample or None), sharing the work
    with worker processes; returns how many workers ran (0: none were needed or possible, then nothing is compiled
    here). ``run_step`` runs one step of the fast path's denoiser at the real inputs; ``denoiser`` is the
    :class:`~img2mesh.zero123pp.attention.ReferenceUNet` as configured for the fast path."""
    names = unet_patches.compiled_block_names(unet)
    device = inputs[0].device
    groups = sorted(block_groups(unet, names), key=lambda group: -group[0])
    workers = worker_count(unet, device, len(groups)) if workers is None else workers
    if workers < 1:
        return 0
    spec = {
        "unet_class": f"{type(unet).__module__}.{type(unet).__name__}",
        "unet_config": dict(unet.config),
        "dtype": str(next(unet.parameters()).dtype).removeprefix("torch."),
        "inputs": [_describe(t) for t in inputs],
        "fused_projections": denoiser._cross_stacked is not None,
        "side_stream": denoiser.bank.stream is not None,
        "backend": backend,
        "groups": [members for _, members in groups],
    }
    marker = compile_cache_dir() / MARKERS / f"{_marker_key(spec)}.json"
    if marker.exists():
        return 0
    started = time.perf_counter()
    threads = max(1, _cores() // (workers + 1))
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(compile_cache_dir()),
        "TORCHINDUCTOR_COMPILE_THREADS": str(threads),
    }
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    spec["device"] = str(device)
    logs = marker.parent / "logs"  # the last precompilation's worker logs (what each compiled, and when)
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("worker*.log"):
        old.unlink()
    processes = []
    with tempfile.TemporaryDirectory(prefix="img2mesh_precompile_") as claims:
        spec_file = Path(claims) / "spec.json"
        spec_file.write_text(json.dumps({**spec, "claims": claims, "spawned": time.time()}, default=str))
        for i in range(workers):
            log = open(logs / f"worker{i}.log", "w+")  # noqa: SIM115  (closed by _wait)
            cmd = [sys.executable, "-m", "img2mesh.zero123pp.precompile", str(spec_file)]
            processes.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        try:
            own = _compile_here(unet, spec["groups"], Path(claims), run_step, processes, started + timeout, backend)
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


def _compile_here(unet, groups, claims: Path, run_step, processes, deadline: float, backend) -> int:
    """This process's part of the queue: compile the groups it claims, then the workers' groups (from the cache)
    as each is done, and at the end whatever is left; returns how many groups it compiled from scratch. Blocks of
    groups not compiled yet run eagerly in the steps meanwhile."""
    modules = dict(unet.named_modules())

    def compile_group(index: int) -> None:
        for name in groups[index]:
            unet_patches.compile_block(modules[name], backend)

    own, theirs = 0, []
    try:
        for index in range(len(groups)):
            if _claim(claims, index):
                compile_group(index)
                run_step()
                own += 1
            else:
                theirs.append(index)
        while theirs and time.perf_counter() < deadline:
            ready = [index for index in theirs if (claims / f"{index}.done").exists()]
            if ready:
                for index in ready:
                    compile_group(index)
                run_step()  # compiles them from the cache
                theirs = [index for index in theirs if index not in ready]
            elif all(process.poll() is not None for process, _ in processes):
                break  # a worker failed: its group compiles at the next step, in this process
            else:
                time.sleep(0.05)
    finally:
        for index in range(len(groups)):
            compile_group(index)
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
    group of blocks, compile it as the main process does and run one step at the main process's shapes."""

    def since_spawn(what: str) -> None:  # the worker's timeline, for the log (start-up vs compilation)
        print(f"{time.time() - spec['spawned']:6.1f} s after spawn: {what}", flush=True)

    from img2mesh.zero123pp.attention import ReferenceUNet

    since_spawn("torch and diffusers imported")
    device = torch.device(spec["device"])
    if device.type == "cpu":  # the processes share the cores: one thread pool each would oversubscribe them
        torch.set_num_threads(int(os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", "1")))
    module, _, name = spec["unet_class"].rpartition(".")
    with torch.device("meta"):
        unet = getattr(importlib.import_module(module), name).from_config(spec["unet_config"])
    unet = torch.nn.Module.to(unet, getattr(torch, spec["dtype"])).to_empty(device=device).eval()
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
    unet_patches.install(unet)
    since_spawn("UNet built on the device")

    def tensor(description):
        if description is None:
            return None
        t = torch.randn(description["shape"], device=device, dtype=getattr(torch, description["dtype"]))
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    sample, timestep, encoder_hidden_states, reference_sample = map(tensor, spec["inputs"])
    t = spec["inputs"][1] or {"shape": [], "dtype": "float32"}  # None: the main process passed a Python number
    timestep = torch.full(t["shape"], 500.0, dtype=getattr(torch, t["dtype"]), device=device)
    inputs = (sample, timestep, encoder_hidden_states, reference_sample)
    modules = dict(unet.named_modules())
    claims = Path(spec["claims"])
    for index, members in enumerate(spec["groups"]):
        if not _claim(claims, index):
            continue
        started = time.perf_counter()
        for block in members:
            unet_patches.compile_block(modules[block], spec["backend"])
        with torch.no_grad():
            denoiser(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _mark_done(claims, index)
        since_spawn(f"group {index} ({len(members)} blocks) compiled in {time.perf_counter() - started:.1f} s")
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
    print(f"peak GPU memory {peak:.2f} GB", flush=True)


if __name__ == "__main__":
    run_worker(json.loads(Path(sys.argv[1]).read_text()))
