"""The Zero123++ denoising step at the speed of the GPU: compiled blocks replayed from one CUDA graph.

Why this exists. One step is two UNet passes (reference pass on the 64x64 condition latent, main pass on the
120x80 sample, both at batch 2 with guidance): about 6.8 TFLOP, ~9 ms of H100 arithmetic, yet ~70-100 ms eager,
because ~1,000 small kernels are launched from Python and cuDNN converts NCHW activations to NHWC around every
convolution (``../shared/reference/zero123pp_gpu_profile.md``). The modes (H100 numbers: benchmarks/RESULTS.md):

- **CUDA graphs** (``"graphs"``, the default on CUDA): the whole step (both passes) is captured once per input
  shape and replayed, which removes the launch overhead without changing the kernels. The reference pass runs on
  a side stream (:mod:`~img2mesh.zero123pp.attention`), so inside the graph the two passes are parallel branches
  that meet layer by layer: 31.1 ms per step on an H100 (32.8 ms with the passes in series), warm-up ~7 s.
- **Regional compilation** (``"blocks"``): ``torch.compile`` on each ``ResnetBlock2D`` and ``Transformer2DModel``
  (their channels-last forwards from :mod:`~img2mesh.zero123pp.fused_blocks`) and on the output GroupNorm, with
  static shapes, fuses normalisation and elementwise work. Compiling the repeated blocks instead of the whole UNet
  means each distinct (block, shape) pair is compiled once and shared by every block like it, in both passes; the
  compiled code lands in Inductor's on-disk cache (under the user cache folder), so later runs skip most of it.
  The first compilation is shared by this process and worker processes (:mod:`~img2mesh.zero123pp.precompile`):
  48 s on an H100 machine (160 s one graph after the other), 17 s from the cache. Alone it gains nothing: guards
  and graph breaks cost what fusion saves. The upsamplers run as transposed convolutions
  (:func:`fused_blocks.upsample_forward`).
- ``"blocks+graphs"``: compiled kernels replayed from one graph, the fastest step (19.4 ms on an H100, ms/step
  18.9-19.9); worth its warm-up for batches.
- **Fused runs** (``"fused"``, ``"fused+graphs"``, :mod:`~img2mesh.zero123pp.fused_blocks`): the same fusion
  between the library calls, but as four small functions compiled with symbolic shapes, 9 graphs for the whole
  UNet instead of ~60: first warm-up 54 s, 16 s cached, but 27.7 ms per step on an H100 (benchmarks/RESULTS.md).
- **Channels-last** weights and activations in every fast mode, so convolutions run in cuDNN's native layout, and
  stacked projection weights (one GEMM for each self-attention's query/key/value, one for all prompt keys/values);
  with them, the two passes project each layer's keys and values into one shared buffer instead of concatenating.

What stays outside the captured region, so that every mode draws the same random numbers in the same order as the
eager path: the per-step reference noise, the scheduler's sigma lookups and its noise, guidance. The captured
callable is exactly ``pipe.denoiser`` (reference pass + main pass), which takes only tensors.

Where a mode cannot run (no CUDA, MPS, a GPU Triton does not support, CPU offload hooks that move weights during
the step), :func:`resolve_mode` picks the best one that can, and says so in the log; if compilation or capture
fails at the first step, the step falls back to eager with a warning rather than crashing.
"""

from __future__ import annotations

import logging
import os
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from img2mesh.zero123pp import fused_blocks

logger = logging.getLogger(__name__)

FastMode = Literal["auto", "off", "graphs", "fused", "fused+graphs", "blocks", "blocks+graphs"]
#: Modes that do something, from most to least demanding.
ACTIVE_MODES = ("blocks+graphs", "fused+graphs", "graphs", "blocks", "fused")
#: Folder of :func:`compile_cache_dir` where :mod:`~img2mesh.zero123pp.precompile` marks finished first compilations.
PRECOMPILED_MARKERS = "img2mesh_precompiled"
#: Dynamo keeps one compiled variant per (block, input shapes); SD2's blocks need dozens in the two passes, more
#: than dynamo's default limit of 8 per function (process-wide setting, raised, never lowered).
RECOMPILE_LIMIT = 128


#: Images per process from which "auto" compiles the blocks ("blocks+graphs"), with and without a compile cache
#: that a previous run filled: where the saved time per image (~0.9 s at 75 steps on an H100) repays the longer
#: warm-up (17 s against 7-10 s for "graphs" cached, 48 s cold; benchmarks/RESULTS.md, run 6).
BLOCKS_FROM_IMAGES = {"cached": 8, "cold": 40}


def auto_mode(cuda: bool, offload: bool, can_compile: bool, images: int, cache_filled: bool) -> str:
    """What "auto" asks for: eager off CUDA; "graphs" for a few images per process (shortest run for one image);
    "blocks+graphs" (the fastest step) for as many images per process as repay its compile (:data:`BLOCKS_FROM_IMAGES`);
    "graphs" whenever offload hooks are installed (a CUDA graph cannot replay weights that move; the caller then
    degrades to eager)."""
    if not cuda:
        return "off"
    if can_compile and not offload and images >= BLOCKS_FROM_IMAGES["cached" if cache_filled else "cold"]:
        return "blocks+graphs"
    return "graphs"


def resolve_mode(requested: str, device: torch.device | str, offload: bool = False, images: int = 1) -> str:
    """The mode that will actually run for ``requested`` on ``device``; never raises for an unsupported setup.

    "auto" follows :func:`auto_mode` for ``images`` images to be generated by this process. Measured on an H100
    (benchmarks/RESULTS.md), "graphs" gives the shortest run for one image per process: 7-10 s of warm-up and 2.5 s
    for 75 steps, against 17 s (warm compile cache; 48 s cold, with ~31 GB of GPU memory and 8 processes for the
    compile workers) and 1.6 s for "blocks+graphs". An explicit mode that cannot run degrades (graphs need CUDA and
    no offload hooks; blocks need a compiler backend) and the change is logged.
    """
    if requested not in ("auto", "off", *ACTIVE_MODES):
        raise ValueError(f"compile mode must be one of auto, off, {', '.join(ACTIVE_MODES)}; got {requested!r}")
    device = torch.device(device)
    if requested == "off":
        return "off"
    cuda = device.type == "cuda" and torch.cuda.is_available()
    can_graph = cuda and not offload
    can_compile = _can_compile(device)
    wanted = requested
    if requested == "auto":
        # The cache is looked at only where its state can change the answer (a one-image run never touches it).
        filled = cuda and images >= BLOCKS_FROM_IMAGES["cached"] and precompiled_before()
        wanted = auto_mode(cuda, offload, can_compile, images, cache_filled=filled)
    mode = "+".join(
        part for part in wanted.split("+") if (part == "graphs" and can_graph) or (part != "graphs" and can_compile)
    )
    mode = mode or "off"
    if mode != wanted and requested != "auto":
        logger.warning("compile mode %r cannot run on %s%s; using %r", requested, device, _why(cuda, offload), mode)
    elif mode == "off":
        logger.info("compile mode auto on %s%s: running eager", device, _why(cuda, offload))
    return mode


def _why(cuda: bool, offload: bool) -> str:
    if not cuda:
        return " (CUDA graphs need a CUDA device)"
    if offload:
        return " (CPU offload moves weights during the step, which a CUDA graph cannot replay)"
    return " (Triton does not support this GPU)"


def _can_compile(device: torch.device) -> bool:
    """Whether Inductor can generate kernels for ``device``: Triton on CUDA (compute capability ≥ 7.0); on the CPU
    only when asked for explicitly (C++ codegen), never for "auto"."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return False
        return torch.cuda.is_available() and has_triton()
    return device.type == "cpu"


def compile_cache_dir() -> Path:
    """Inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``<user cache>/img2mesh/torchinductor``.

    Set in the environment before the first compilation, so compiled kernels (and Triton's binaries, kept inside
    it) survive the process and a later run's warm-up mostly reads them back.
    """
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "img2mesh" / "torchinductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def precompiled_before() -> bool:
    """Whether a finished first compilation left its marker in :func:`compile_cache_dir` (any model and shapes: the
    hint "auto" needs, not a guarantee that this model's graphs are cached)."""
    return any((compile_cache_dir() / PRECOMPILED_MARKERS).glob("*.json"))


def compiled_block_types() -> tuple[type, ...]:
    """The UNet blocks compiled one by one: residual blocks and transformer stacks (norm, projections, blocks)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return (ResnetBlock2D, Transformer2DModel)


def compiled_block_names(unet: torch.nn.Module) -> list[str]:
    """Module names of the blocks :func:`compile_blocks` compiles, in ``named_modules`` order (the output norm,
    ``conv_norm_out``, last where it is a plain GroupNorm)."""
    names = [name for name, m in unet.named_modules() if isinstance(m, compiled_block_types())]
    return names + ([TAIL_NORM] if _plain_tail_norm(unet) else [])


#: The UNet's output GroupNorm, compiled on its own in the "blocks" modes: eager, CUDA's GroupNorm copies the
#: channels-last map to NCHW and returns NCHW, which ``conv_out`` converts back (~0.15 ms of an H100 step with
#: the kernels themselves; compiled, one kernel that keeps the layout).
TAIL_NORM = "conv_norm_out"


def _plain_tail_norm(unet: torch.nn.Module) -> bool:
    norm = getattr(unet, TAIL_NORM, None)
    return isinstance(norm, torch.nn.GroupNorm) and norm.affine


def _channels_last_group_norm(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return fused_blocks.group_norm_act(x, norm, norm.weight, norm.bias, act=False)


def compile_blocks(unet: torch.nn.Module, backend: str = "inductor", only: Sequence[str] | None = None) -> int:
    """``torch.compile`` every repeated block of ``unet`` (or the blocks named in ``only``) in place; returns how
    many were wrapped.

    Shapes are static: each (block, input and weight shapes) pair is compiled once and shared by every block like
    it. (Symbolic shapes, one compilation per block structure, measured worse on an H100: a cold warm-up over
    270 s instead of 180 s, 67 s instead of 22 s with a warm cache, and 24.2 instead of 22.5 ms per step.)
    Compilation itself is lazy: it happens at the first call with each shape, i.e. at the first denoising step.

    The blocks compiled are the channels-last forwards of :mod:`~img2mesh.zero123pp.fused_blocks` (plain, the
    compilation fuses them), installed on every plain block whether compiled here or not: diffusers' transformer
    returns NCHW-contiguous maps, which cost a layout conversion before every following convolution and in every
    mixed-layout skip concatenation (~13 strided copies per step on an H100), while the fused forward's output is
    channels-last, its tokens reinterpreted without a copy.
    """
    prepare_blocks(unet)
    modules = dict(unet.named_modules())
    blocks = [modules[name] for name in (compiled_block_names(unet) if only is None else only)]
    for block in blocks:
        compile_block(block, backend)
    return len(blocks)


def prepare_blocks(unet: torch.nn.Module) -> None:
    """What :func:`compile_blocks` does before compiling any block: the channels-last forwards, the eager
    self-attention, the compile cache and recompile limit."""
    _prepare_compilation()
    fused_blocks.install(unet, fused_blocks.FusedOps())
    if _plain_tail_norm(unet):
        norm = getattr(unet, TAIL_NORM)
        norm.forward = types.MethodType(_channels_last_group_norm, norm)
    for attn in _reference_attentions(unet):
        # The reference tokens live in a dict the attn1 processors fill and empty layer by layer; traced, every
        # fill level would be a guard and a recompile. Run attn1 itself eagerly (its work is GEMMs and SDPA, which
        # compilation would call as library kernels anyway) and compile around it.
        attn.forward = torch.compiler.disable(attn.forward, recursive=True)


def compile_block(block: torch.nn.Module, backend: str | Callable = "inductor") -> None:
    """``torch.compile`` one block in place, with static shapes (compiled at its first call per shape)."""
    block.compile(backend=backend, dynamic=False, fullgraph=False)


def _prepare_compilation() -> None:
    """Inductor's on-disk cache folder, and a recompile limit that the blocks' shapes fit in."""
    compile_cache_dir()
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), RECOMPILE_LIMIT))


def _reference_attentions(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules (``attn1``) of the transformer blocks, which carry reference attention."""
    return [m for name, m in unet.named_modules() if name.endswith(".attn1")]


def uncompile_blocks(unet: torch.nn.Module) -> None:
    """Undo :func:`compile_blocks`: every block runs diffusers' eager ``forward`` again."""
    fused_blocks.uninstall(unet)
    modules = dict(unet.named_modules())
    for name in compiled_block_names(unet):
        modules[name]._compiled_call_impl = None
    if _plain_tail_norm(unet):
        getattr(unet, TAIL_NORM).__dict__.pop("forward", None)
    for attn in _reference_attentions(unet):
        attn.__dict__.pop("forward", None)


class GraphedStep:
    """Replays ``step`` from a CUDA graph, captured once per input signature (shapes, dtypes, strides, Nones).

    ``step`` must take tensors (or lists of tensors, or None), return one tensor, and neither draw random numbers
    nor read host values of device tensors. Each call copies the inputs into the graph's static buffers, replays
    it and returns a copy of its output (so the caller may keep it across steps). All graphs share one memory pool;
    they are never replayed concurrently.
    """

    def __init__(self, step: Callable[..., torch.Tensor], warmup: int = 2) -> None:
        self.step = step
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor | None], torch.Tensor]] = {}
        self._pool = None

    def __call__(self, *args: torch.Tensor | Sequence[torch.Tensor] | None) -> torch.Tensor:
        flat, structure = _flatten(args)
        key = (structure, *(_signature(t) for t in flat))
        if key not in self._graphs:
            self._graphs[key] = self._capture(flat, structure)
        graph, static, output = self._graphs[key]
        for buffer, value in zip(static, flat, strict=True):
            if buffer is not None:
                buffer.copy_(value)
        graph.replay()
        return output.clone()

    @property
    def captured(self) -> int:
        """How many graphs (input signatures) have been captured."""
        return len(self._graphs)

    def _capture(self, flat, structure):
        static = [None if t is None else t.clone() for t in flat]
        args = _unflatten(static, structure)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            # Compiles, autotunes convolutions (cudnn.benchmark) and lets lazy allocations happen before capture.
            for _ in range(self.warmup):
                self.step(*args)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.step(*args)
        return graph, static, output


def _flatten(args) -> tuple[list[torch.Tensor | None], tuple]:
    flat: list[torch.Tensor | None] = []
    structure = []
    for arg in args:
        if isinstance(arg, list | tuple):
            flat.extend(arg)
            structure.append(len(arg))
        else:
            flat.append(arg)
            structure.append(-1)
    return flat, tuple(structure)


def _unflatten(flat, structure) -> list:
    args, i = [], 0
    for n in structure:
        if n < 0:
            args.append(flat[i])
            i += 1
        else:
            args.append(list(flat[i : i + n]))
            i += n
    return args


def _signature(t: torch.Tensor | None):
    if t is None:
        return None
    return (tuple(t.shape), t.dtype, t.device, t.stride())


class FastDenoiser:
    """Drop-in for ``pipe.denoiser`` (reference pass + main pass) that runs it in a fast mode.

    Inputs go channels-last like the weights. The first call of a compiled/graphed mode pays the warm-up; if that
    call fails (a compiler or capture error), the denoiser logs it and runs eager from then on, same results.
    Before the first call of the "blocks" modes with Inductor on CUDA, worker processes compile the blocks into
    the on-disk cache in parallel (:mod:`~img2mesh.zero123pp.precompile`; ``precompile_workers``: None picks the
    number from the cores and free GPU memory, 0 never starts any).
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        unet: torch.nn.Module,
        mode: str,
        backend: str | Callable = "inductor",
        precompile_workers: int | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.unet = unet
        self.mode = mode
        self._graphed = GraphedStep(self._step) if "graphs" in mode else None
        self._failed = False
        self._precompile = "blocks" in mode and backend == "inductor" and precompile_workers != 0
        self._precompile_workers = precompile_workers
        self.precompiled: tuple[int, float] = (0, 0.0)
        """Worker processes the first call started to fill the compile cache, and the seconds they took."""

    def _precompile_once(self, sample, timestep, encoder_hidden_states, reference_sample) -> None:
        self._precompile = False
        if sample.device.type != "cuda":
            return
        from img2mesh.zero123pp.precompile import precompile

        started = time.perf_counter()
        if self._graphed is not None:  # as the graphed step will see it (a tensor), so that guards match
            timestep = torch.as_tensor(timestep, device=sample.device)
        inputs = (sample, timestep, encoder_hidden_states, reference_sample)
        try:
            workers = precompile(
                self.denoiser,
                self.unet,
                compiled_block_names(self.unet),
                inputs,
                workers=self._precompile_workers,
                run_step=lambda: self._step(*inputs),
            )
            self.precompiled = (workers, time.perf_counter() - started)
        except Exception as error:  # parallel precompilation only saves time; the step compiles what is missing
            logger.warning("precompilation in workers failed (%s: %s)", type(error).__name__, error)

    def _step(self, sample, timestep, encoder_hidden_states, reference_sample, down=None, mid=None):
        sample = sample.contiguous(memory_format=torch.channels_last)
        if reference_sample is not None:
            reference_sample = reference_sample.contiguous(memory_format=torch.channels_last)
        return self.denoiser(sample, timestep, encoder_hidden_states, reference_sample, down or None, mid)

    def __call__(self, sample, timestep, encoder_hidden_states, reference_sample, down=None, mid=None):
        if self._failed:
            return self.denoiser(sample, timestep, encoder_hidden_states, reference_sample, down, mid)
        if self._precompile:
            self._precompile_once(sample, timestep, encoder_hidden_states, reference_sample)
        try:
            if self._graphed is not None:
                timestep = torch.as_tensor(timestep, device=sample.device)
                return self._graphed(sample, timestep, encoder_hidden_states, reference_sample, down or [], mid)
            return self._step(sample, timestep, encoder_hidden_states, reference_sample, down, mid)
        except Exception as error:  # a compiler/capture failure must cost speed, never the run
            logger.warning("fast path %r failed (%s: %s); continuing eager", self.mode, type(error).__name__, error)
            self._failed = True
            self._graphed = None
            _undo(self.denoiser, self.unet)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return self.denoiser(sample, timestep, encoder_hidden_states, reference_sample, down, mid)


def enable_fast_path(
    pipe,
    mode: str = "auto",
    offload: bool = False,
    backend: str = "inductor",
    precompile_workers: int | None = None,
    images: int = 1,
) -> str:
    """Switch ``pipe`` (a :class:`~img2mesh.zero123pp.pipeline.Zero123PlusPipeline`) to a fast mode; returns it.

    Call after the pipeline is on its device and in its dtype. ``offload`` says CPU offload hooks are installed.
    ``images``: how many images this process will generate, which decides what "auto" compiles (:func:`auto_mode`).
    ``backend`` is ``torch.compile``'s (tests use "eager" to exercise the wrapping without code generation).
    ``precompile_workers``: worker processes for the first compilation of the "blocks" modes (None: as many as the
    machine allows, 0: none; :mod:`~img2mesh.zero123pp.precompile`).
    Graphed modes also run the reference pass on a side stream, concurrently with the main pass
    (:class:`~img2mesh.zero123pp.attention.ReferenceBank`): inside one CUDA graph the two become parallel
    branches that wait for each other only layer by layer.
    """
    disable_fast_path(pipe)
    device = pipe.unet.device if not offload else pipe._execution_device
    mode = resolve_mode(mode, device, offload=offload, images=images)
    if mode == "off":
        return mode
    pipe.unet.to(memory_format=torch.channels_last)
    if not offload:  # offload moves the UNet's weights, which the stacked copies would not follow
        pipe.denoiser.fuse_projections()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution per shape once, at warm-up
    if "blocks" in mode:
        compile_blocks(pipe.unet, backend=backend)
    if "fused" in mode:
        _prepare_compilation()
        fused_blocks.install(pipe.unet, fused_blocks.FusedOps.compiled(backend))
    if "graphs" in mode:
        pipe.denoiser.bank.stream = torch.cuda.Stream(device)
    pipe.denoiser = FastDenoiser(pipe.denoiser, pipe.unet, mode, backend, precompile_workers)
    logger.info("Zero123++ fast path: %s", mode)
    return mode


def disable_fast_path(pipe) -> None:
    """Back to the eager denoiser (weights stay channels-last, which only changes their layout)."""
    if isinstance(pipe.denoiser, FastDenoiser):
        pipe.denoiser = pipe.denoiser.denoiser
    _undo(pipe.denoiser, pipe.unet)


def _undo(denoiser, unet: torch.nn.Module) -> None:
    uncompile_blocks(unet)
    fused_blocks.uninstall(unet)
    denoiser.unfuse_projections()
    denoiser.bank.stream = None
