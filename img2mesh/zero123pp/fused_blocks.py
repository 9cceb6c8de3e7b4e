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
channels-last end to end (8 compilations for the full SD2 UNet at the real shapes: the CPU tests count them on
meta tensors). Uncompiled, the patched forwards compute what diffusers' do up to the rounding of a different
convolution algorithm for the channels-last layout; compiled, up to fp16 rounding.

The "blocks" modes install the same forwards with the plain functions and compile whole blocks around them
(static shapes), for their channels-last outputs: diffusers' transformer returns NCHW maps, which the following
convolutions and skip concatenations convert back.

Only the plain SD configuration is patched (what Zero123++'s SD2 UNet uses: GroupNorm + SiLU resnets without
up/down sampling inside, linear-projection transformers of LayerNorm blocks with GEGLU); anything else keeps its
diffusers forward.
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
    """``group_norm(x)`` of a (B, C, H, W) map as (B, H·W, C) tokens (the transformer's input layout)."""
    b, c, h, w = x.shape
    return F.group_norm(x, norm.num_groups, weight, bias, norm.eps).permute(0, 2, 3, 1).reshape(b, h * w, c)


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
    """Give every plain resnet and transformer block of ``unet`` its fused ``forward``; returns how many."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    count = 0
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D) and _plain_resnet(module):
            module.forward = types.MethodType(lambda self, *a, **k: resnet_forward(self, ops, *a, **k), module)
            count += 1
        elif isinstance(module, Transformer2DModel) and _plain_transformer(module):
            module.forward = types.MethodType(lambda self, *a, **k: transformer_forward(self, ops, *a, **k), module)
            count += 1
    return count


def uninstall(unet: torch.nn.Module) -> None:
    """Back to diffusers' ``forward`` for every block :func:`install` patched."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D | Transformer2DModel):
            module.__dict__.pop("forward", None)
