"""Every change the fast path makes to diffusers' UNet modules, in one place: install, compile, uninstall.

Eager, ~100 GroupNorms, LayerNorms, SiLUs, GEGLUs and residual adds run as kernels of their own between the library
calls of a step, and CUDA's GroupNorm turns channels-last activations into NCHW copies that the next convolution
converts back. The compiled mode (``fast_step``) compiles the repeated blocks; what it compiles are the forwards
below, which keep activations channels-last end to end (diffusers' transformer returns NCHW maps, which cost a
layout conversion before every following convolution and skip concatenation).

:func:`install` (on every plain SD block; anything else keeps diffusers' forward):

- ``ResnetBlock2D`` and ``Transformer2DModel``: :func:`resnet_forward`, :func:`transformer_forward`.
- ``Upsample2D`` (nearest 2x, then a 3x3 convolution): one transposed convolution with summed taps
  (:func:`upsample_forward`), 4/9 of the work and no upsampled map written.
- The output GroupNorm (``conv_norm_out``): channels-last in and out.
- Every self-attention (``attn1``) stays eager inside compiled blocks: the reference tokens live in a dict the
  processors fill and empty layer by layer, and traced, every fill level would be a guard and a recompile.

:func:`compile_block` then wraps a block's forward in ``torch.compile`` (static shapes: each (block, shape) pair
compiles once and is shared by every block like it). All of it is instance attributes, which :func:`uninstall`
removes. Uncompiled, the patched forwards compute what diffusers' do up to the rounding of a different convolution
algorithm for the channels-last layout.

The one other change to diffusers' modules is Zero123++'s own, in every mode: the attention processors of
:mod:`~img2mesh.zero123pp.attention`, installed through diffusers' ``set_attn_processor``, and the projections
they keep on each ``Attention`` module (``CROSS_KV`` per step, ``FUSED_QKV`` while the fast path stacks weights).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: The UNet's output GroupNorm, compiled with the blocks (eager, it copies channels-last maps to NCHW and back).
TAIL_NORM = "conv_norm_out"
#: Attributes marking a module whose forward :func:`install` replaced, and one :func:`compile_block` wrapped.
PATCHED, COMPILED = "_img2mesh_patched", "_img2mesh_compiled"
#: Compiled variants dynamo may keep per function: one per (block, input shapes), dozens for SD2's blocks in the two
#: passes, where its default is 8 (beyond which it runs the function eagerly).
RECOMPILE_LIMIT = 128


def group_norm_act(x, norm: torch.nn.GroupNorm, act: bool, shift=None):
    """``silu(group_norm(x + shift))`` (``shift`` broadcast per channel, optional; SiLU when ``act``), returned
    channels-last like the convolution weights that read it."""
    x = x.contiguous(memory_format=torch.channels_last)
    if shift is not None:
        x = x + shift
    y = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if act:
        y = F.silu(y)
    return y.contiguous(memory_format=torch.channels_last)


def group_norm_tokens(x, norm: torch.nn.GroupNorm):
    """``group_norm(x)`` of a (B, C, H, W) map as contiguous (B, H·W, C) tokens (the transformer's input layout),
    so that the compiled norm kernel writes the layout the input projection reads (channel-major tokens cost a copy
    and a separate bias add per transformer)."""
    x = x.contiguous(memory_format=torch.channels_last)
    normed = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return normed.flatten(2).transpose(1, 2).contiguous()


def add_layer_norm(x, residual, norm: torch.nn.LayerNorm):
    """``(x + residual, layer_norm(x + residual))``: a transformer's residual add and the next sub-block's norm."""
    h = x + residual
    return h, F.layer_norm(h, (h.shape[-1],), norm.weight, norm.bias, norm.eps)


def geglu(x):
    """GEGLU's gating of a projection holding (value, gate) halves on its last axis."""
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


def resnet_forward(block, input_tensor, temb, *args, **kwargs):
    """``ResnetBlock2D.forward`` of the plain SD block, with its norms, activations and time-embedding add fused."""
    hidden = block.conv1(group_norm_act(input_tensor, block.norm1, True))
    if block.time_emb_proj is not None:
        if not block.skip_time_act:
            temb = block.nonlinearity(temb)
        temb = block.time_emb_proj(temb)[:, :, None, None]
    hidden = group_norm_act(hidden, block.norm2, True, temb)
    hidden = block.conv2(block.dropout(hidden))
    if block.conv_shortcut is not None:
        input_tensor = block.conv_shortcut(input_tensor)
    output = input_tensor + hidden
    return output if block.output_scale_factor == 1.0 else output / block.output_scale_factor


def basic_block_forward(block, hidden, encoder_hidden_states):
    """``BasicTransformerBlock.forward`` (LayerNorm variant): self-attention, cross-attention, GEGLU feed-forward,
    each residual add fused with the next norm."""
    attn = block.attn1(block.norm1(hidden))
    hidden, normed = add_layer_norm(attn, hidden, block.norm2)
    attn = block.attn2(normed, encoder_hidden_states=encoder_hidden_states)
    hidden, normed = add_layer_norm(attn, hidden, block.norm3)
    project, dropout, out = block.ff.net[0].proj, block.ff.net[1], block.ff.net[2]
    feed = out(dropout(geglu(project(normed))))
    for extra in block.ff.net[3:]:
        feed = extra(feed)
    return feed + hidden


def transformer_forward(
    model,
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
        raise ValueError("the patched transformer forward takes no timestep, class labels, added conditions or masks")
    if cross_attention_kwargs:
        raise ValueError("the patched transformer forward takes no cross_attention_kwargs")
    b, _, h, w = hidden_states.shape
    tokens = model.proj_in(group_norm_tokens(hidden_states, model.norm))
    for block in model.transformer_blocks:
        tokens = basic_block_forward(block, tokens, encoder_hidden_states)
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
    """``Upsample2D.forward`` (nearest 2x, then a 3x3 convolution) as one transposed convolution: every output pixel
    of the 3x3 convolution over the upsampled map sees only 2x2 distinct input pixels. Same maths up to the rounding
    of the summed taps. Other sizes, or a weight not where the input is (CPU offload), take diffusers' forward."""
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


def tail_norm_forward(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """The output GroupNorm, channels-last in and out."""
    return group_norm_act(x, norm, act=False)


def _plain_tail_norm(unet: torch.nn.Module) -> bool:
    norm = getattr(unet, TAIL_NORM, None)
    return isinstance(norm, torch.nn.GroupNorm) and norm.affine


def compiled_block_names(unet: torch.nn.Module) -> list[str]:
    """Module names of the blocks the compiled mode compiles, in ``named_modules`` order: residual blocks,
    transformer stacks, and last the output norm where it is a plain GroupNorm."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    names = [name for name, m in unet.named_modules() if isinstance(m, ResnetBlock2D | Transformer2DModel)]
    return names + ([TAIL_NORM] if _plain_tail_norm(unet) else [])


def install(unet: torch.nn.Module) -> int:
    """Give every plain resnet and transformer block of ``unet`` its channels-last ``forward``, every plain nearest
    2x upsampler its transposed convolution (weights as they are now: call after moving the UNet), the output norm
    its channels-last forward, and every self-attention an eager forward; returns how many blocks and upsamplers
    were patched."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    def patch(module: torch.nn.Module, forward: Callable) -> None:
        module.forward = forward
        setattr(module, PATCHED, True)

    count = 0
    for name, module in unet.named_modules():
        if isinstance(module, Upsample2D) and _plain_upsample(module):
            setattr(module, UPSAMPLE_WEIGHT, upsample_weight(module.conv))
            patch(module, types.MethodType(upsample_forward, module))
            count += 1
        elif isinstance(module, ResnetBlock2D) and _plain_resnet(module):
            patch(module, types.MethodType(resnet_forward, module))
            count += 1
        elif isinstance(module, Transformer2DModel) and _plain_transformer(module):
            patch(module, types.MethodType(transformer_forward, module))
            count += 1
        elif name.endswith(".attn1"):
            patch(module, torch.compiler.disable(module.forward, recursive=True))
    if _plain_tail_norm(unet):
        norm = getattr(unet, TAIL_NORM)
        patch(norm, types.MethodType(tail_norm_forward, norm))
    return count


def compile_block(block: torch.nn.Module, backend: str | Callable = "inductor") -> None:
    """``torch.compile`` the (patched) forward of ``block`` in place, with static shapes, once; compilation itself
    happens at its first call per shape, in the calling thread (:func:`raise_recompile_limit` is applied there)."""
    raise_recompile_limit()
    if not getattr(block, COMPILED, False):
        block.forward = torch.compile(block.forward, backend=backend, dynamic=False, fullgraph=False)
        setattr(block, COMPILED, True)


def raise_recompile_limit() -> None:
    """Raise dynamo's per-function limit of compiled variants to :data:`RECOMPILE_LIMIT` (never lower it) in this
    thread: from torch 2.13 dynamo's settings are per thread, and each compile worker is a process of its own.
    Through the public ``torch.compiler.config`` where this torch has it (2.10 on), else ``torch._dynamo.config``."""
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "recompile_limit"):
        from torch._dynamo import config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def uninstall(unet: torch.nn.Module) -> None:
    """Back to diffusers' ``forward`` for every module :func:`install` or :func:`compile_block` patched."""
    for module in unet.modules():
        if getattr(module, PATCHED, False) or getattr(module, COMPILED, False):
            for attribute in ("forward", UPSAMPLE_WEIGHT, PATCHED, COMPILED):
                module.__dict__.pop(attribute, None)
