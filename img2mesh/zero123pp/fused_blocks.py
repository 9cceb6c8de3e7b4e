"""The UNet's normalisation and elementwise work fused into a few kernels compiled once for every shape.

Why. Between the library calls of a step (cuDNN convolutions, cuBLAS projections, flash attention) sit ~100
GroupNorms, LayerNorms, SiLUs, GEGLUs and residual adds. Eager, each is its own kernel over the whole activation,
and CUDA's GroupNorm turns channels-last activations into NCHW copies, which the next convolution converts back.
Compiling whole UNet blocks (``fast_step.compile_blocks``) fuses all of that, but with static shapes every (block,
shape) pair of the two passes is a compilation of its own: ~45 graphs, three minutes on a cold cache.

Here the fusible runs are plain functions (:func:`group_norm_act`, :func:`group_norm_tokens`,
:func:`add_layer_norm`, :func:`geglu`) compiled with symbolic shapes, so a handful of compilations serve every
block at every resolution in both passes; the blocks' own ``forward`` is replaced by :func:`resnet_forward` /
:func:`transformer_forward`, which call those functions around the unchanged library calls and keep activations
channels-last end to end (9 compilations for the full SD2 UNet at the real shapes: the CPU tests count them on
meta tensors). Uncompiled, the patched forwards compute what diffusers' do up to the rounding of a different
convolution algorithm for the channels-last layout; compiled, up to fp16 rounding.

The "blocks" modes install the same forwards with the plain functions and compile whole blocks around them
(static shapes), for their channels-last outputs: diffusers' transformer returns NCHW maps, which the following
convolutions and skip concatenations convert back.

Both install one more change, outside any compiled code: each upsampler (nearest 2x, then a 3x3 convolution)
becomes one transposed convolution with summed taps (:func:`upsample_forward`), 4/9 of the work and no upsampled
map written.

Only the plain SD configuration is patched (what Zero123++'s SD2 UNet uses: GroupNorm + SiLU resnets without
up/down sampling inside, linear-projection transformers of LayerNorm blocks with GEGLU, nearest-neighbour
upsamplers with a 3x3 convolution); anything else keeps its diffusers forward.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F


def group_norm_act(x, norm: torch.nn.GroupNorm, weight, bias, act: bool, shift=None):
    """``silu(group_norm(x + shift))`` (``shift`` broadcast per channel, optional; SiLU when ``act``), returned
    channels-last like the convolution weights that read it. ``norm`` supplies the group count and epsilon, which
    stay compile-time constants (module attributes); its weight and bias come separately as plain tensors, whose
    sizes are symbolic like the activation's (parameters would pin every channel count: a compilation each)."""
    if shift is not None:
        x = x + shift
    y = F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
    if act:
        y = F.silu(y)
    return y.contiguous(memory_format=torch.channels_last)


def group_norm_tokens(x, norm: torch.nn.GroupNorm, weight, bias):
    """``group_norm(x)`` of a (B, C, H, W) map as contiguous (B, H·W, C) tokens (the transformer's input layout).

    Contiguous, because GroupNorm's output layout is NCHW (that is what the compiler matches, too), which makes
    these tokens channel-major: the input projection (``proj_in``, a library GEMM after this function returns)
    then copies them and adds its bias in a kernel of its own. Attributed on an H100 (benchmarks/RESULTS.md, run
    6): 32 such copies and their bias adds per step, ~0.95 ms of GPU time in a 20.6 ms "blocks+graphs" step;
    compiled, the contiguous layout is written by the norm kernel itself."""
    normed = F.group_norm(x, norm.num_groups, weight, bias, norm.eps)
    return normed.flatten(2).transpose(1, 2).contiguous()


def add_layer_norm(x, residual, norm: torch.nn.LayerNorm, weight, bias):
    """``(x + residual, layer_norm(x + residual))``: a transformer's residual add and the next sub-block's norm."""
    h = x + residual
    return h, F.layer_norm(h, (h.shape[-1],), weight, bias, norm.eps)


def geglu(x):
    """GEGLU's gating of a projection holding (value, gate) halves on its last axis."""
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class FusedOps:
    """The fused functions a patched block calls, each given a norm module: compiled, or the plain functions (then
    the patched blocks compute what diffusers' do).

    Inputs are normalised before the call so that compiled code sees one layout and symbolic sizes: activations
    channels-last, norm parameters as plain tensors (``detach``: same storage).
    """

    def __init__(self, compile_fn: Callable[[Callable], Callable] | None = None) -> None:
        wrap = compile_fn or (lambda fn: fn)
        self._group_norm_act = wrap(group_norm_act)
        self._group_norm_tokens = wrap(group_norm_tokens)
        self._add_layer_norm = wrap(add_layer_norm)
        self.geglu = wrap(geglu)

    @classmethod
    def compiled(cls, backend: str | Callable = "inductor") -> FusedOps:
        """Each function under ``torch.compile`` with symbolic shapes (compilation happens at the first call)."""
        return cls(lambda fn: torch.compile(fn, backend=backend, dynamic=True, fullgraph=True))

    def group_norm_act(self, x, norm: torch.nn.GroupNorm, act: bool, shift=None):
        return self._group_norm_act(_channels_last(x), norm, norm.weight.detach(), norm.bias.detach(), act, shift)

    def group_norm_tokens(self, x, norm: torch.nn.GroupNorm):
        return self._group_norm_tokens(_channels_last(x), norm, norm.weight.detach(), norm.bias.detach())

    def add_layer_norm(self, x, residual, norm: torch.nn.LayerNorm):
        return self._add_layer_norm(x, residual, norm, norm.weight.detach(), norm.bias.detach())


def resnet_forward(block, ops: FusedOps, input_tensor, temb, *args, **kwargs):
    """``ResnetBlock2D.forward`` of the plain SD block, with its norms, activations and time-embedding add fused."""
    hidden = block.conv1(ops.group_norm_act(input_tensor, block.norm1, True))
    if block.time_emb_proj is not None:
        if not block.skip_time_act:
            temb = block.nonlinearity(temb)
        temb = block.time_emb_proj(temb)[:, :, None, None]
    hidden = ops.group_norm_act(hidden, block.norm2, True, temb)
    hidden = block.conv2(block.dropout(hidden))
    if block.conv_shortcut is not None:
        input_tensor = block.conv_shortcut(input_tensor)
    output = input_tensor + hidden
    return output if block.output_scale_factor == 1.0 else output / block.output_scale_factor


def basic_block_forward(block, ops: FusedOps, hidden, encoder_hidden_states):
    """``BasicTransformerBlock.forward`` (LayerNorm variant): self-attention, cross-attention, GEGLU feed-forward,
    each residual add fused with the next norm."""
    attn = block.attn1(block.norm1(hidden))
    hidden, normed = ops.add_layer_norm(attn, hidden, block.norm2)
    attn = block.attn2(normed, encoder_hidden_states=encoder_hidden_states)
    hidden, normed = ops.add_layer_norm(attn, hidden, block.norm3)
    project, dropout, out = block.ff.net[0].proj, block.ff.net[1], block.ff.net[2]
    feed = out(dropout(ops.geglu(project(normed))))
    for extra in block.ff.net[3:]:
        feed = extra(feed)
    return feed + hidden


def transformer_forward(
    model,
    ops: FusedOps,
    hidden_states,
    encoder_hidden_states=None,
    timestep=None,
    added_cond_kwargs=None,
    class_labels=None,
    cross_attention_kwargs=None,
    attention_mask=None,
    encoder_attention_mask=None,
    return_dict: bool = True,
):
    """``Transformer2DModel.forward`` for continuous input with linear projections; the output stays channels-last
    (diffusers makes it NCHW-contiguous, which the next convolution would convert back)."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    if any(v is not None for v in (timestep, added_cond_kwargs, class_labels, attention_mask, encoder_attention_mask)):
        raise ValueError("the fused transformer block takes no timestep, class labels, added conditions or masks")
    if cross_attention_kwargs:
        raise ValueError("the fused transformer block takes no cross_attention_kwargs")
    b, _, h, w = hidden_states.shape
    tokens = model.proj_in(ops.group_norm_tokens(hidden_states, model.norm))
    for block in model.transformer_blocks:
        tokens = basic_block_forward(block, ops, tokens, encoder_hidden_states)
    tokens = model.proj_out(tokens)
    output = tokens.reshape(b, h, w, tokens.shape[-1]).permute(0, 3, 1, 2) + hidden_states
    return Transformer2DModelOutput(sample=output) if return_dict else (output,)


#: Attribute of an ``Upsample2D`` holding its transposed-convolution weight (:func:`upsample_weight`), or absent.
UPSAMPLE_WEIGHT = "_img2mesh_upsample_weight"
#: Per axis, the 4 taps of the transposed convolution from the 3 taps of the convolution after nearest 2x
#: upsampling: output row 2m sees input rows m-1 (tap 0) and m (taps 1+2); row 2m+1 sees m (taps 0+1) and m+1 (2).
_UPSAMPLE_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def upsample_weight(conv: torch.nn.Conv2d) -> torch.Tensor:
    """The (in, out, 4, 4) weight of the transposed convolution (stride 2, padding 1) that equals nearest 2x
    upsampling followed by ``conv`` (3x3, stride 1, padding 1): taps summed in (at least) fp32, then rounded to
    the weight's dtype."""
    dtype = torch.promote_types(conv.weight.dtype, torch.float32)
    taps = torch.tensor(_UPSAMPLE_TAPS, dtype=dtype, device=conv.weight.device)
    weight = torch.einsum("ka,lb,oiab->iokl", taps, taps, conv.weight.detach().to(dtype))
    return weight.to(conv.weight.dtype).contiguous(memory_format=torch.channels_last)


def upsample_forward(module, hidden_states, output_size=None, *args, **kwargs):
    """``Upsample2D.forward`` (nearest 2x, then a 3x3 convolution) as one transposed convolution.

    Why: the upsampled map is 4x the input, and every output pixel of the 3x3 convolution over it sees only 2x2
    distinct input pixels, so the convolution does 9/4 the necessary work and the upsampling writes a map the
    size of its output: on an H100, the three upsamplers of the two passes cost ~0.9 ms of a ~21 ms step this
    way (benchmarks/RESULTS.md, run 6). The same maths up to the rounding of the summed taps (fp16 weights).
    Other sizes, or a weight not where the input is (CPU offload), take diffusers' forward."""
    weight = getattr(module, UPSAMPLE_WEIGHT, None)
    if weight is None or output_size is not None or args or kwargs or weight.device != hidden_states.device:
        return type(module).forward(module, hidden_states, output_size, *args, **kwargs)
    return F.conv_transpose2d(hidden_states, weight, module.conv.bias, stride=2, padding=1)


def _plain_upsample(module) -> bool:
    conv = getattr(module, "conv", None)
    return (
        module.use_conv
        and not module.use_conv_transpose
        and module.interpolate
        and module.norm is None
        and module.name == "conv"
        and isinstance(conv, torch.nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _plain_resnet(block) -> bool:
    return (
        block.upsample is None
        and block.downsample is None
        and block.time_embedding_norm == "default"
        and isinstance(block.nonlinearity, torch.nn.SiLU)
        and isinstance(block.norm1, torch.nn.GroupNorm)
        and isinstance(block.norm2, torch.nn.GroupNorm)
        and block.norm1.affine
        and block.norm2.affine
    )


def _plain_transformer(model) -> bool:
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention import BasicTransformerBlock

    if not (
        getattr(model, "is_input_continuous", False)
        and model.use_linear_projection
        and isinstance(model.norm, torch.nn.GroupNorm)
        and model.norm.affine
    ):
        return False
    return all(
        isinstance(block, BasicTransformerBlock)
        and block.norm_type == "layer_norm"
        and block.pos_embed is None
        and not block.only_cross_attention
        and block.attn2 is not None
        and block._chunk_size is None
        and isinstance(block.ff.net[0], GEGLU)
        and all(isinstance(norm, torch.nn.LayerNorm) for norm in (block.norm1, block.norm2, block.norm3))
        for block in model.transformer_blocks
    )


def install(unet: torch.nn.Module, ops: FusedOps) -> int:
    """Give every plain resnet and transformer block of ``unet`` its fused ``forward``, every plain nearest 2x
    upsampler its transposed convolution (weights as they are now: call after moving the UNet); returns how many
    modules were patched."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    count = 0
    for module in unet.modules():
        if isinstance(module, Upsample2D) and _plain_upsample(module):
            setattr(module, UPSAMPLE_WEIGHT, upsample_weight(module.conv))
            module.forward = types.MethodType(upsample_forward, module)
            count += 1
        elif isinstance(module, ResnetBlock2D) and _plain_resnet(module):
            module.forward = types.MethodType(lambda self, *a, **k: resnet_forward(self, ops, *a, **k), module)
            count += 1
        elif isinstance(module, Transformer2DModel) and _plain_transformer(module):
            module.forward = types.MethodType(lambda self, *a, **k: transformer_forward(self, ops, *a, **k), module)
            count += 1
    return count


def uninstall(unet: torch.nn.Module) -> None:
    """Back to diffusers' ``forward`` for every module :func:`install` patched (and its transposed weight gone)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D | Transformer2DModel | Upsample2D):
            module.__dict__.pop("forward", None)
            module.__dict__.pop(UPSAMPLE_WEIGHT, None)
