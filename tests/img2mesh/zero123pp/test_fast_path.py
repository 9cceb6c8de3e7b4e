"""The Zero123++ fast path on the CPU: mode resolution and fallbacks, and what can run here giving the eager output
(compiled blocks through torch.compile's "eager" backend, channels-last, the compile-failure fallback, the CUDA-graph
wrapper's argument plumbing, the shared key/value buffers, the transposed-convolution upsamplers, the compile queue
of this process and a worker, the compile artifacts a later warm-up starts from). Budget: ~2 min on 2 cores (the
compile cache test ~60 s: Inductor's C++ backend, a worker process)."""

from __future__ import annotations

import logging
import shutil
import sys
import threading

import pytest
import torch

from img2mesh.testing.random_weights import save_random_zero123pp
from img2mesh.zero123pp import precompile, unet_patches
from img2mesh.zero123pp.fast_step import (
    BLOCKS_FROM_IMAGES,
    FastDenoiser,
    _flatten,
    _unflatten,
    auto_mode,
    disable_fast_path,
    enable_fast_path,
    graphs_repaid,
    resolve_mode,
)
from img2mesh.zero123pp.pipeline import Zero123PlusPipeline
from img2mesh.zero123pp.precompile import block_groups, compile_cache_dir


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = save_random_zero123pp(tmp_path_factory.mktemp("tiny"), size="tiny")
    pipeline = Zero123PlusPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def denoiser_inputs(pipe, size: int = 16):
    """Small latents: the UNet runs at any size, and one size for both passes keeps the compiled variants few."""
    g = torch.Generator().manual_seed(3)
    d = pipe.unet.config.cross_attention_dim
    sample = torch.randn(2, 4, size, size, generator=g)
    reference = torch.randn(2, 4, size, size, generator=g)
    return sample, torch.tensor(500.0), torch.randn(2, 77, d, generator=g), reference


def guided_prediction(pipe) -> torch.Tensor:
    """One guided step of the pipeline (reference noise draw, scheduler scaling, CFG) on small latents."""
    sample, _, embeds, reference = denoiser_inputs(pipe)
    pipe.scheduler.set_timesteps(4)
    torch.manual_seed(0)
    with torch.no_grad():
        return pipe.predict(sample[:1], pipe.scheduler.timesteps[1], embeds, reference, guidance_scale=4.0)


def test_auto_is_off_on_cpu_and_impossible_modes_degrade_with_a_log(caplog) -> None:
    assert resolve_mode("auto", "cpu") == "off"
    assert resolve_mode("off", "cpu") == "off"
    with caplog.at_level(logging.WARNING, logger="img2mesh.zero123pp.fast_step"):
        assert resolve_mode("graphs", "cpu") == "off"
        assert resolve_mode("blocks+graphs", "cpu") == "off"
    assert sum("cannot run" in r.getMessage() for r in caplog.records) == 2
    for removed in ("turbo", "blocks", "fused", "fused+graphs"):
        with pytest.raises(ValueError, match="compile mode"):
            resolve_mode(removed, "cpu")


def test_auto_compiles_the_blocks_only_for_a_batch_that_repays_the_compile(monkeypatch, tmp_path) -> None:
    cached, cold = BLOCKS_FROM_IMAGES["cached"], BLOCKS_FROM_IMAGES["cold"]
    assert auto_mode(cuda=True, offload=False, can_compile=True, images=1, cache_filled=True) == "graphs"
    assert auto_mode(cuda=True, offload=False, can_compile=True, images=cached, cache_filled=True) == "blocks+graphs"
    assert auto_mode(cuda=True, offload=False, can_compile=True, images=cached, cache_filled=False) == "graphs"
    assert auto_mode(cuda=True, offload=False, can_compile=True, images=cold, cache_filled=False) == "blocks+graphs"
    # No compiler (old GPU, no Triton) or offload hooks: never the blocks; off CUDA: eager whatever the batch.
    assert auto_mode(cuda=True, offload=False, can_compile=False, images=cold, cache_filled=True) == "graphs"
    assert auto_mode(cuda=True, offload=True, can_compile=True, images=cold, cache_filled=True) == "graphs"
    assert auto_mode(cuda=False, offload=False, can_compile=True, images=cold, cache_filled=True) == "off"
    assert resolve_mode("auto", "cpu", images=cold) == "off"
    # Eager where the graphs' shorter steps do not repay their longer warm-up (few steps, one image).
    assert auto_mode(cuda=True, offload=False, can_compile=True, images=1, cache_filled=False, steps=1) == "off"
    assert auto_mode(cuda=True, offload=False, can_compile=False, images=1, cache_filled=False, steps=1) == "off"
    assert auto_mode(cuda=True, offload=False, can_compile=True, images=cached - 1, cache_filled=True) == "graphs"
    assert graphs_repaid(1, 10_000) and not graphs_repaid(1, 1)
    # The cache counts as filled once a first compilation left its artifacts file there.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert not precompile.cache_filled()
    (tmp_path / precompile.ARTIFACTS).mkdir()
    (tmp_path / precompile.ARTIFACTS / "model-and-shapes.bin").write_bytes(b"")
    assert precompile.cache_filled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_graph_modes_without_cuda_leave_the_pipeline_eager(pipe) -> None:
    assert enable_fast_path(pipe, "graphs") == "off"
    assert not isinstance(pipe.denoiser, FastDenoiser)


def test_compile_cache_defaults_under_the_user_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "img2mesh" / "torchinductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


def test_graph_argument_plumbing_round_trips_lists_and_nones() -> None:
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    flat, structure = _flatten((a, None, [b, c], [], c))
    assert len(flat) == 5 and flat[1] is None
    rebuilt = _unflatten(flat, structure)
    assert rebuilt[0] is a and rebuilt[1] is None and rebuilt[2] == [b, c] and rebuilt[3] == [] and rebuilt[4] is c


def test_compiled_blocks_give_the_eager_output_with_reference_attention(pipe) -> None:
    """Regional compilation (dynamo tracing, eager attn1 inside compiled blocks, the "eager" backend standing in for
    Inductor) plus channels-last: the pipeline's guided step equals eager, nothing recompiles on later steps, and
    reference attention is still in effect; undoing it restores diffusers' forwards."""
    inputs = denoiser_inputs(pipe)
    eager = guided_prediction(pipe)
    pipe.denoiser = FastDenoiser(pipe.denoiser, pipe.unet, compile_backend="eager")
    try:
        fast = guided_prediction(pipe)
        assert all(getattr(pipe.unet.get_submodule(n), unet_patches.COMPILED, False) for n in compiled_names(pipe))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with torch.no_grad():
            with_ref = pipe.denoiser(*inputs)
            without_ref = pipe.denoiser(*inputs[:3], None)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
        assert not pipe.denoiser.failed
    finally:
        disable_fast_path(pipe)
    assert not isinstance(pipe.denoiser, FastDenoiser)
    assert not any("forward" in m.__dict__ for m in pipe.unet.modules())
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)
    assert (with_ref - without_ref).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(pipe.denoiser(*inputs), with_ref, rtol=1e-4, atol=1e-4)


def compiled_names(pipe) -> list[str]:
    return unet_patches.compiled_block_names(pipe.unet)


class CountCats(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the concatenations a forward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.cats = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.cats += func is torch.ops.aten.cat.default
        return func(*args, **(kwargs or {}))


def test_stacked_projections_share_one_buffer_per_layer_and_give_the_eager_output(pipe) -> None:
    """Fast modes' stacked projections: the first call learns each layer's main-pass token count and concatenates;
    from the second call on, both passes project into one buffer per layer, so no key/value concatenation is left
    (two fewer per reference layer), and every call gives the eager output. A new sample size is learned again."""
    inputs = denoiser_inputs(pipe)
    denoiser = pipe.denoiser
    denoiser.bank.main_tokens.clear()  # what earlier tests' calls taught it
    layers = len(denoiser.reference_layers)
    with torch.no_grad():
        expected = denoiser(*inputs)
        other = (torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(5)), *inputs[1:])
        expected_other = denoiser(*other)
        denoiser.fuse_projections()
        try:
            counts, outputs = [], []
            for args in (inputs, inputs, other, other):
                with CountCats() as mode:
                    outputs.append(denoiser(*args))
                counts.append(mode.cats)
        finally:
            denoiser.unfuse_projections()
            denoiser.bank.main_tokens.clear()
    assert counts[0] - counts[1] == 2 * layers and counts[2] - counts[3] == 2 * layers
    for got, want in zip(outputs, (expected, expected, expected_other, expected_other), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_patched_blocks_compute_what_diffusers_blocks_compute(pipe) -> None:
    """The patched resnet, transformer and upsampler forwards, uncompiled: same
    denoiser output as diffusers' forwards up to float rounding (channels-last changes the CPU convolution
    algorithm, the upsamplers' taps are summed), every block of the tiny UNet patched, and uninstalling restores
    diffusers' forwards exactly."""
    inputs = denoiser_inputs(pipe, size=12)
    with torch.no_grad():
        expected = pipe.denoiser(*inputs)
        patched = unet_patches.install(pipe.unet)
        try:
            fused = pipe.denoiser(*inputs)
        finally:
            unet_patches.uninstall(pipe.unet)
        restored = pipe.denoiser(*inputs)
    resnets = sum(type(m).__name__ == "ResnetBlock2D" for m in pipe.unet.modules())
    transformers = sum(type(m).__name__ == "Transformer2DModel" for m in pipe.unet.modules())
    upsamplers = sum(type(m).__name__ == "Upsample2D" for m in pipe.unet.modules())
    assert upsamplers > 0 and resnets > 0 and transformers > 0
    assert patched == resnets + transformers + upsamplers
    assert not any(hasattr(m, unet_patches.UPSAMPLE_WEIGHT) for m in pipe.unet.modules())
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(restored, expected)


def test_upsampler_as_one_transposed_convolution_equals_nearest_upsampling_then_convolution() -> None:
    """In float64 the transposed convolution equals diffusers' nearest 2x upsampling + 3x3 convolution to rounding,
    borders included (zero padding of the upsampled map is zero padding of the input); a forced output size or a
    weight on another device takes diffusers' forward."""
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    module = Upsample2D(8, use_conv=True, out_channels=6).double()
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = module(x)
        setattr(module, unet_patches.UPSAMPLE_WEIGHT, unet_patches.upsample_weight(module.conv))
        got = unet_patches.upsample_forward(module, x)
        assert got.shape == (2, 6, 10, 14)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        odd = unet_patches.upsample_forward(module, x, (11, 15))
        assert odd.shape == (2, 6, 11, 15)
        setattr(module, unet_patches.UPSAMPLE_WEIGHT, torch.zeros(8, 6, 4, 4, dtype=torch.float64, device="meta"))
        torch.testing.assert_close(unet_patches.upsample_forward(module, x), expected)


def test_compiling_a_block_raises_the_recompile_limit_in_the_compiling_thread() -> None:
    """Past dynamo's default of 8 compiled variants per function, SD2's blocks would run eagerly. The limit is raised
    by the call that compiles a block, so wherever compilation happens: this process's compiling thread (from torch
    2.13 dynamo's settings are per thread: a fresh thread starts from the default) and each compile worker."""

    def limit() -> int:
        config = getattr(torch.compiler, "config", None)
        if config is not None and hasattr(config, "recompile_limit"):
            return config.recompile_limit
        return getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit

    seen = []

    def compile_here() -> None:
        unet_patches.compile_block(torch.nn.Linear(2, 2), "eager")
        seen.append(limit())

    thread = threading.Thread(target=compile_here)
    thread.start()
    thread.join()
    assert seen and seen[0] >= unet_patches.RECOMPILE_LIMIT


def test_blocks_that_compile_alike_are_grouped_for_one_worker() -> None:
    """The full-size SD2 UNet (meta): its 39 compiled blocks (resnets, transformers, the output norm) fall into 19
    groups; the transformers of a down block join those of the up block at the same resolution, the resnets of the
    last down block join the mid block's, the output norm is a group of its own; every block is in exactly one
    group."""
    from diffusers import UNet2DConditionModel

    from img2mesh.testing.random_weights import _UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_UNET["full"])
    names = unet_patches.compiled_block_names(unet)
    groups = block_groups(unet, names)
    assert len(names) == 39 and len(groups) == 19 and names[-1] == "conv_norm_out"
    assert [m for _, m in groups if "conv_norm_out" in m] == [["conv_norm_out"]]
    members = [set(m) for _, m in groups]
    assert {"down_blocks.0.attentions.0", "up_blocks.3.attentions.2"} <= next(
        m for m in members if "up_blocks.3.attentions.0" in m
    )
    assert {"down_blocks.3.resnets.1", "mid_block.resnets.0"} <= next(m for m in members if "mid_block.resnets.1" in m)
    assert sorted(name for m in members for name in m) == sorted(names)


def test_workers_fill_the_cache_once_then_warm_ups_start_from_the_saved_artifacts(
    pipe, tmp_path, monkeypatch, caplog
) -> None:
    """Inductor for real (the CPU's C++ backend; two block groups, to keep it short). First warm-up, empty cache: a
    worker process compiles one group, this process the other, then reads the worker's graph from Inductor's cache;
    the artifacts file saved after that step holds both (torch records cache hits too). After Inductor's cache is
    wiped, a fresh compiler state (as in a new process) loads the file, starts no worker and compiles nothing
    (graph cache hits, no miss), and leaves the file as it was. A file torch cannot read (garbage, another encoding
    version) costs one warning and takes the first-run path (workers; one that dies costs a warning, this process
    compiles its group), and is rewritten loadable. Every call gives the eager output."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    blocks = ["mid_block.resnets.0", unet_patches.TAIL_NORM]  # one group each
    monkeypatch.setattr(unet_patches, "compiled_block_names", lambda unet: blocks)
    spawns = []
    monkeypatch.setattr(precompile, "worker_count", lambda unet, device, groups: spawns.append(groups) or 1)
    claim = precompile._claim  # this process takes group 0 only, so the worker compiles group 1
    monkeypatch.setattr(precompile, "_claim", lambda claims, index: index == 0 and claim(claims, index))
    pipe.unet.to(memory_format=torch.channels_last)  # as enable_fast_path leaves it (and a worker builds it)
    inputs = denoiser_inputs(pipe)
    with torch.no_grad():
        expected = pipe.denoiser(*inputs)

    def warm_up() -> tuple[FastDenoiser, int, int]:
        """A fresh compiler state, then a first call; the denoiser, graph cache hits and misses."""
        torch.compiler.reset()
        counters.clear()
        fast = pipe.denoiser = FastDenoiser(pipe.denoiser, pipe.unet, compile_backend="inductor")
        try:
            with torch.no_grad():
                got = pipe.denoiser(*inputs)
        finally:
            disable_fast_path(pipe)
        assert not fast.failed
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        return fast, counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]

    fast, hits, misses = warm_up()
    log = (tmp_path / precompile.ARTIFACTS / "logs" / "worker0.log").read_text()
    assert fast.precompiled[0] == 1 and spawns == [2] and "group 1 (1 blocks) compiled" in log
    assert misses >= 1 and hits >= 1  # its own group compiled, the worker's read from the cache
    artifacts = fast.artifacts
    assert sorted((tmp_path / precompile.ARTIFACTS).glob("*.bin")) == [artifacts] and precompile.cache_filled()
    saved = artifacts.read_bytes()
    spec = precompile.cache_spec(pipe.denoiser, pipe.unet, inputs, "inductor")  # other shapes: another file
    assert precompile.artifacts_file(spec) == artifacts
    assert (
        precompile.artifacts_file(
            precompile.cache_spec(pipe.denoiser, pipe.unet, (inputs[0][:1], *inputs[1:]), "inductor")
        )
        != artifacts
    )

    for entry in tmp_path.iterdir():  # Inductor's own cache gone, the artifacts file kept
        if entry.name != precompile.ARTIFACTS:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    fast, hits, misses = warm_up()
    assert fast.loaded and fast.precompiled == (0, 0.0) and spawns == [2]
    assert misses == 0 and hits >= 2
    assert artifacts.read_bytes() == saved

    monkeypatch.setattr(precompile, "_claim", claim)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the worker dies at once
    for unreadable in (b"not compile artifacts", bytes([saved[0] ^ 0xFF]) + saved[1:]):
        artifacts.write_bytes(unreadable)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="img2mesh.zero123pp"):
            fast, _, _ = warm_up()
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("img2mesh")]
        assert len(ours) == 2 and "ignored" in ours[0] and "worker failed" in ours[1]
        assert not fast.loaded and fast.precompiled[0] == 1
        assert torch.compiler.load_cache_artifacts(artifacts.read_bytes()) is not None
    assert len(spawns) == 3


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("no code generator for this device")


def test_a_compiler_failure_falls_back_to_eager_with_a_warning(pipe, caplog) -> None:
    inputs = denoiser_inputs(pipe)
    with torch.no_grad():
        expected = pipe.denoiser(*inputs)
    pipe.denoiser = FastDenoiser(pipe.denoiser, pipe.unet, compile_backend=failing_backend)
    try:
        with caplog.at_level(logging.WARNING, logger="img2mesh.zero123pp.fast_step"), torch.no_grad():
            got = pipe.denoiser(*inputs)
        assert pipe.denoiser.failed
        assert any("continuing eager" in r.getMessage() for r in caplog.records)
        with torch.no_grad():
            again = pipe.denoiser(*inputs)  # later steps go straight to eager
    finally:
        disable_fast_path(pipe)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-4)
