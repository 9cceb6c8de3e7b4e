"""The compiled mode's compile cache: Inductor's on-disk cache, one file of torch's compile artifacts per model
and shapes, and worker processes that share the first compilation.

Why. The compiled mode turns a step into ~60 graphs (each distinct block structure at each resolution, transformers
split around their eager self-attention). Compiling a graph is single-threaded Python (tracing, lowering, code
generation), so compiled one after the other at the first step they take minutes, while a later run reads them
back from torch's caches in seconds (benchmarks/RESULTS.md, "Zero123++ fast path").

- The first compilation (:func:`precompile`) is parallel: worker processes build the same UNet (compiled code
  depends on shapes, layouts and dtypes, never on values), and the block groups (blocks that compile to the same
  graphs: same kind, resolution level and channels) are a queue, largest first. Whoever takes a group, a worker or
  this process, compiles it and runs one step at the real shapes, which leaves its graphs in Inductor's cache
  (:func:`compile_cache_dir`); this process loads each group a worker finishes while the others still compile.
  Workers cost GPU memory while they run, so their number is capped by the free memory as well as the cores; one
  that fails or runs out of time only costs speed (this process compiles what is missing).
- After that first step, :func:`save_artifacts` writes everything this process compiled or read from the cache
  (``torch.compiler.save_cache_artifacts``: torch records cache hits too, so the workers' graphs are in it) to one
  file named by :func:`artifacts_file` (model configuration, input shapes and dtypes, versions, card, the source
  of the step). A later run hands it to ``torch.compiler.load_cache_artifacts`` (:func:`load_artifacts`) before it
  compiles, and starts no worker; a copy of the file is a warm start where the Inductor cache is empty (same card
  and versions). A file torch cannot read costs a log line and a first compilation, never the run.
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

#: Folder of :func:`compile_cache_dir` holding the artifacts files (``<key>.bin``) and the last workers' logs.
ARTIFACTS = "img2mesh_artifacts"
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
#: The modules whose source decides what a step compiles to (part of an artifacts file's name).
_STEP_SOURCES = ("attention.py", "fast_step.py", "unet_patches.py", "precompile.py")


def compile_cache_dir() -> Path:
    """Inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``<user cache>/img2mesh/torchinductor``
    (set in the environment before the first compilation, so compiled kernels survive the process)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "img2mesh" / "torchinductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def cache_filled() -> bool:
    """Whether a first compilation left an artifacts file in :func:`compile_cache_dir` (any model and shapes: a
    hint, not a guarantee that this model's graphs are cached)."""
    return any((compile_cache_dir() / ARTIFACTS).glob("*.bin"))


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
    """How many workers fit beside this process on a CUDA ``device`` (none elsewhere: the compiled mode needs CUDA):
    two cores each, the free GPU memory, the number of groups."""
    if device.type != "cuda":
        return 0
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    free, _ = torch.cuda.mem_get_info(device)
    memory = int(free // (WORKER_MEMORY_FACTOR * weights + WORKER_OVERHEAD))
    return max(min(MAX_WORKERS, _cores() // 2, groups, memory), 0)


def cache_spec(denoiser, unet: torch.nn.Module, inputs: tuple, backend: str) -> dict:
    """What the compiled blocks of ``unet`` depend on, besides versions and sources, for these denoiser ``inputs``
    (sample, timestep, encoder states, reference sample or None); ``denoiser`` is the
    :class:`~img2mesh.zero123pp.attention.ReferenceUNet` as configured for the fast path. Names the artifacts file
    and tells a worker what to build (JSON-able)."""

    def describe(t) -> dict | None:
        return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} if torch.is_tensor(t) else None

    return {
        "unet_class": f"{type(unet).__module__}.{type(unet).__name__}",
        "unet_config": dict(unet.config),
        "dtype": str(next(unet.parameters()).dtype).removeprefix("torch."),
        "device": str(inputs[0].device),
        "inputs": [describe(t) for t in inputs],
        "fused_projections": denoiser._cross_stacked is not None,
        "side_stream": denoiser.bank.stream is not None,
        "backend": backend,
    }


def artifacts_file(spec: dict) -> Path:
    """The artifacts file of :func:`cache_spec` ``spec`` on this torch, diffusers, Python and card, with this
    source of the step."""
    import diffusers

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for name in _STEP_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update(f"{torch.__version__} {diffusers.__version__} {sys.version}".encode())
    if torch.cuda.is_available():
        digest.update(torch.cuda.get_device_name().encode())
    return compile_cache_dir() / ARTIFACTS / f"{digest.hexdigest()[:24]}.bin"


def load_artifacts(path: Path) -> frozenset[str]:
    """Hand the compile artifacts in ``path`` to torch's caches; returns the keys of those it held (empty: no
    file, or one torch cannot read, which is logged and left for :func:`save_artifacts` to replace)."""
    if not path.is_file():
        return frozenset()
    why = "not compile artifacts of this torch"  # torch returns None for what it cannot decode
    torch_log = logging.getLogger("torch.compiler._cache")  # whose traceback would say it again in ten lines
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
        keys = frozenset(key for keys in info.artifacts.values() for key in keys) if info else frozenset()
    except Exception as error:
        keys, why = frozenset(), f"{type(error).__name__}: {error}"
    finally:
        torch_log.setLevel(level)
    if not keys:
        logger.warning("compile cache: ignored %s (%s); compiling as on a first run", path, why)
    else:
        logger.info("compile cache: loaded %d artifacts from %s", len(keys), path)
    return keys


def save_artifacts(path: Path, loaded: frozenset[str] = frozenset()) -> bool:
    """Write the compile artifacts of everything this process compiled or read from the cache to ``path``, unless
    the file holds them all already (``loaded``, from :func:`load_artifacts`); returns whether it wrote. Written
    whole, then renamed into place, so a reader never sees half a file; a failure costs a warning only."""
    try:
        saved = torch.compiler.save_cache_artifacts()  # None: nothing went through Inductor
        if saved is None or {key for keys in saved[1].artifacts.values() for key in keys} <= loaded:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(saved[0])
        partial.replace(path)
    except Exception as error:
        logger.warning("compile cache: could not save %s (%s: %s)", path, type(error).__name__, error)
        return False
    logger.info("compile cache: saved %.1f MB of compile artifacts to %s", len(saved[0]) / 1e6, path)
    return True


def precompile(
    spec: dict,
    unet: torch.nn.Module,
    run_step: Callable[[], object],
    workers: int | None = None,
    timeout: float = WORKER_TIMEOUT,
) -> int:
    """Compile every block of ``unet`` (:func:`unet_patches.compiled_block_names`, patched and not compiled yet)
    for the inputs :func:`cache_spec` describes in ``spec``, sharing the work with worker processes; returns how
    many workers ran (0: none could, then nothing is compiled here). ``run_step`` runs one step of the fast path's
    denoiser at those inputs."""
    names = unet_patches.compiled_block_names(unet)
    groups = sorted(block_groups(unet, names), key=lambda group: -group[0])
    if workers is None:
        workers = worker_count(unet, torch.device(spec["device"]), len(groups))
    if workers < 1:
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
    logs = compile_cache_dir() / ARTIFACTS / "logs"  # the last workers' logs (what each compiled, and when)
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("worker*.log"):
        old.unlink()
    processes = []
    with tempfile.TemporaryDirectory(prefix="img2mesh_precompile_") as claims:
        spec = {**spec, "groups": [members for _, members in groups], "claims": claims, "spawned": time.time()}
        spec_file = Path(claims) / "spec.json"
        spec_file.write_text(json.dumps(spec, default=str))
        for i in range(workers):
            log = open(logs / f"worker{i}.log", "w+")  # noqa: SIM115  (closed by _wait)
            cmd = [sys.executable, "-m", "img2mesh.zero123pp.precompile", str(spec_file)]
            processes.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        try:
            own = _compile_here(
                unet, spec["groups"], Path(claims), run_step, processes, started + timeout, spec["backend"]
            )
            logger.info("precompile: this process compiled %d of %d block groups itself", own, len(groups))
        finally:
            failed = _wait(processes, started + timeout)
    seconds = time.perf_counter() - started
    logger.info("precompiled %d blocks with %d workers in %.1f s (%d failed)", len(names), workers, seconds, failed)
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
