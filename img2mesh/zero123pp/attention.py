"""Reference attention: how Zero123++ feeds the condition image to an unmodified SD2 UNet.

Every denoising step runs the UNet twice. The *reference pass* runs on the noised condition latent and
each self-attention layer (``attn1`` of every transformer block, 16 in SD2) sees its input, i.e. the output of the
block's ``norm1``. The *main pass* runs on the sample, and each ``attn1`` appends those reference tokens of the same
layer to its keys and values (queries come from the sample alone; same projections, no mask, no new weights).
Cross-attention (``attn2``) is untouched.

What the processors skip, without changing a bit of the result (the fidelity test holds them to a literal
transcription of SUDO AI's public pipeline in fp32 on the CPU):

- The reference pass keeps the projected keys and values of its tokens rather than the tokens: the main pass would
  project them again with the same weights (``to_k(cat[h, r]) == cat[to_k(h), to_k(r)]`` row by row).
- The reference pass stops as soon as the last reference layer has its keys and values: the rest of the last up
  block, ``norm_out`` and ``conv_out`` cannot affect the output (:class:`ReferenceComplete`).
- The prompt embedding is the same in both passes, so the cross-attention keys and values of every layer are
  projected once per step (:meth:`ReferenceUNet.forward`), not once per pass.
- Fast paths also stack projections (:meth:`ReferenceUNet.fuse_projections`): each self-attention layer projects
  query, key and value in one GEMM, and one GEMM projects the prompt for the cross-attention of all layers. This
  changes the rounding of fp16 GEMMs, not the maths, so the eager path leaves it off.
- With stacked projections, a self-attention layer's keys and values for the main pass are never concatenated:
  the reference pass projects its tokens into the tail of one (batch, main + reference tokens, 3·channels) buffer
  per layer and the main pass projects its own into the head (:class:`SharedProjection`), so the keys and values
  the main pass attends to are already one tensor (a concatenation would copy ~46 MB per layer and step). The
  main-pass token count each layer will have is learned from the previous call; until it is
  known, or if the shapes change, the layer concatenates as before.
- With a side stream (:attr:`ReferenceBank.stream`, set by the CUDA-graph fast path), the reference pass runs on
  it, concurrently with the main pass: each main-pass layer waits only for its own layer's reference keys and
  values (one CUDA event per layer), so the two passes' kernels fill the GPU together.

The state shared by the two passes is a :class:`ReferenceBank` that the processors hold, so nothing travels through
``cross_attention_kwargs``. :class:`ReferenceUNet` is the one callable that evaluates the model for a step
("reference pass + main pass"): fast paths (``torch.compile``, CUDA graphs) replace or wrap it as a whole.
"""

from __future__ import annotations

import contextlib
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

BankMode = Literal["off", "write", "read"]
#: Attribute of an ``attn2`` module holding this step's (key, value) of the prompt embedding, or None. An attribute
#: of the module rather than an entry keyed by layer name, so that code compiled around the module (regional
#: compilation) sees the same structure in every layer and compiles once per shape, not once per layer.
CROSS_KV = "_zero123pp_cross_kv"
#: Attribute of an ``attn1`` module holding its query, key and value weights stacked into one matrix, or None
#: (:meth:`ReferenceUNet.fuse_projections`): one projection GEMM instead of three.
FUSED_QKV = "_zero123pp_qkv"


class ReferenceComplete(Exception):
    """Raised by the last reference layer in the reference pass: everything after it is wasted work."""


class SharedProjection(NamedTuple):
    """One layer's stacked query/key/value projections of both passes in one buffer: rows ``[:main]`` of each batch
    item are the main pass's tokens (written by the main pass), rows ``[main:]`` the reference pass's."""

    buffer: torch.Tensor
    """(batch, main + reference tokens, 3·channels): query | key | value on the last axis."""
    main: int
    """Main-pass token count the buffer was made for."""


class ReferenceBank:
    """The reference keys and values recorded by one reference pass, keyed by layer name, and what layers do now."""

    def __init__(self) -> None:
        self.mode: BankMode = "off"
        """"write": record keys and values; "read": attend to the recorded ones (consuming them); "off": plain."""
        self.keys_values: dict[str, tuple[torch.Tensor, torch.Tensor] | SharedProjection] = {}
        """Layer name → projected (key, value) of the reference pass's tokens, each (batch, tokens, channels), or
        (stacked projections) the buffer both passes project into."""
        self.main_tokens: dict[tuple[str, int], int] = {}
        """(layer name, reference tokens) → the main-pass token count that layer had in the last call: the size of
        the shared buffer the next reference pass allocates."""
        self.last_layer: str | None = None
        """The layer after which the reference pass stops (the last reference layer in execution order)."""
        self.stream: torch.cuda.Stream | None = None
        """Side stream the reference pass runs on, concurrently with the main pass; None runs it first, inline."""
        self.ready: dict[str, torch.cuda.Event] = {}
        """Layer name → event recorded on :attr:`stream` once that layer's keys and values exist."""
        self.retain = False
        """Training (gradient checkpointing re-runs layers in the backward pass, in the mode they first ran in): keep
        the keys and values after the step until :meth:`clear` and read them without consuming them, run the
        reference pass to its end, and let every layer project its own prompt keys and values."""

    def clear(self) -> None:
        self.mode = "off"
        self.keys_values.clear()
        self.ready.clear()


def check_plain_attention(attn: Attention) -> None:
    """Raise ValueError unless ``attn`` is the plain attention of SD UNets, the only kind the processors implement
    (what diffusers' ``AttnProcessor2_0`` does for it, operation for operation)."""
    unsupported = [
        name
        for name, present in (
            ("spatial_norm", attn.spatial_norm is not None),
            ("group_norm", attn.group_norm is not None),
            ("norm_cross", bool(attn.norm_cross)),
            ("norm_q/norm_k", attn.norm_q is not None or attn.norm_k is not None),
            ("residual_connection", attn.residual_connection),
            ("rescale_output_factor", attn.rescale_output_factor != 1.0),
            ("added key/value projections", getattr(attn, "add_k_proj", None) is not None),
        )
        if present
    ]
    if unsupported:
        raise ValueError(f"Zero123++ attention supports plain SD attention only; this layer has {unsupported}")


def attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Multi-head scaled dot-product attention of projected (batch, tokens, channels) tensors, then ``to_out``."""
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](hidden_states))


class ReferenceAttnProcessor:
    """Self-attention (``attn1``) with reference attention.

    "read" gives exactly ``AttnProcessor2_0`` applied with ``encoder_hidden_states = cat([hidden_states,
    reference], dim=1)`` (the reference's processor), with the reference half of the projections taken from the
    bank; "write" is plain self-attention that leaves its keys and values in the bank.
    """

    def __init__(self, name: str, bank: ReferenceBank) -> None:
        self.name = name
        self.bank = bank

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("reference self-attention takes neither encoder states nor a mask")
        stacked = getattr(attn, FUSED_QKV, None)
        if stacked is None or stacked.device != hidden_states.device:
            stacked = None
        mode = self.bank.mode
        if stacked is not None and mode != "off" and not torch.is_grad_enabled():  # no autograd
            return self._shared(attn, hidden_states, stacked)
        if stacked is not None:
            query, key, value = F.linear(hidden_states, stacked).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if mode == "write":
            self.bank.keys_values[self.name] = (key, value)
            self._recorded()
        elif mode == "read":
            self._wait()
            recorded = self.bank.keys_values
            ref_key, ref_value = recorded[self.name] if self.bank.retain else recorded.pop(self.name)
            key = torch.cat([key, ref_key], dim=1)
            value = torch.cat([value, ref_value], dim=1)
        return attend(attn, query, key, value)

    def _wait(self) -> None:
        """On the main pass's stream: wait until this layer's reference keys and values exist (side stream)."""
        if self.name in self.bank.ready:
            torch.cuda.current_stream().wait_event(self.bank.ready.pop(self.name))

    def _recorded(self) -> None:
        """After the reference pass wrote this layer's keys and values: mark them ready, stop after the last."""
        if self.bank.stream is not None:
            event = torch.cuda.Event()
            event.record()  # on the side stream, where the reference pass runs
            self.bank.ready[self.name] = event
        if self.name == self.bank.last_layer and not self.bank.retain:
            raise ReferenceComplete

    def _shared(self, attn: Attention, hidden_states: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
        """Reference attention with stacked projections, both passes projecting into one buffer per layer
        (:class:`SharedProjection`): no concatenation. Same values as the concatenating path (same GEMM per row)."""
        batch, tokens, _ = hidden_states.shape
        width = stacked.shape[0] // 3
        if self.bank.mode == "write":
            main = self.bank.main_tokens.get((self.name, tokens), 0)
            buffer = hidden_states.new_empty(batch, main + tokens, stacked.shape[0])
            _project_into(hidden_states, stacked, buffer[:, main:])
            self.bank.keys_values[self.name] = SharedProjection(buffer, main)
            self._recorded()
            qkv = buffer[:, main:]
            return attend(attn, qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :])
        self._wait()
        recorded = self.bank.keys_values.pop(self.name)
        if isinstance(recorded, SharedProjection):
            buffer, main = recorded
            self.bank.main_tokens[(self.name, buffer.shape[1] - main)] = tokens
            if main == tokens and buffer.shape[0] == batch:
                _project_into(hidden_states, stacked, buffer[:, :main])
                keys, values = buffer[..., width : 2 * width], buffer[..., 2 * width :]
                return attend(attn, buffer[:, :main, :width], keys, values)
            recorded = (buffer[:, main:, width : 2 * width], buffer[:, main:, 2 * width :])
        # First call at these shapes (or reference keys and values without a buffer): concatenate.
        query, key, value = F.linear(hidden_states, stacked).chunk(3, dim=-1)
        key = torch.cat([key, recorded[0]], dim=1)
        value = torch.cat([value, recorded[1]], dim=1)
        return attend(attn, query, key, value)


def _project_into(hidden_states: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """``out[:] = hidden_states @ weight.T`` written in place: one GEMM per batch item, since ``out`` (rows of a
    larger buffer) is contiguous within an item but not across items."""
    for item in range(hidden_states.shape[0]):
        torch.mm(hidden_states[item], weight.t(), out=out[item])


class CrossAttnProcessor:
    """Cross-attention (``attn2``) that takes the prompt's keys and values from the module when the step has
    projected them already (attribute :data:`CROSS_KV`), else projects them itself."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("Zero123++ cross-attention takes no mask")
        projected = getattr(attn, CROSS_KV, None)
        if projected is not None:
            key, value = projected
        else:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            key, value = attn.to_k(context), attn.to_v(context)
        return attend(attn, attn.to_q(hidden_states), key, value)


def is_reference_layer(processor_name: str) -> bool:
    """Whether a UNet attention processor (by its ``attn_processors`` name) gets reference attention: all ``attn1``."""
    return processor_name.endswith("attn1.processor")


def execution_order(names: list[str]) -> list[str]:
    """UNet module names in the order ``UNet2DConditionModel.forward`` runs them: down blocks, mid block, up blocks
    (``named_modules`` lists the mid block last, after the up blocks)."""
    section = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda name: section.get(name.split(".")[0], 1))


class ReferenceUNet(torch.nn.Module):
    """A ``UNet2DConditionModel`` evaluated with reference attention: ``forward`` is one model evaluation of a step.

    Installing it replaces the UNet's attention processors (``attn1``: :class:`ReferenceAttnProcessor`, ``attn2``:
    :class:`CrossAttnProcessor`); the UNet object itself stays a plain diffusers model (offload hooks and ``.to``
    still work).
    """

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet
        self.bank = ReferenceBank()
        processors = {}
        for name in unet.attn_processors:
            reference = is_reference_layer(name)
            processors[name] = ReferenceAttnProcessor(name, self.bank) if reference else CrossAttnProcessor()
        for module in unet.modules():
            if isinstance(module, Attention):
                check_plain_attention(module)
        unet.set_attn_processor(processors)
        self.bank.last_layer = self.reference_layers[-1] if self.reference_layers else None
        # Keep the attention modules outside the registered submodules (they are the UNet's): plain lists.
        self._self = [m for name, m in unet.named_modules() if name.endswith("attn1") and isinstance(m, Attention)]
        self._cross = [m for name, m in unet.named_modules() if name.endswith("attn2") and isinstance(m, Attention)]
        self._cross_stacked: torch.Tensor | None = None

    def fuse_projections(self) -> None:
        """Stack the projection weights as they are now (device, dtype, values): per self-attention layer its
        query/key/value matrices, and the key/value matrices of every cross-attention layer into one. Costs a
        copy of those weights (~125 MB in fp16 for SD2); call again after moving or changing the UNet."""
        for attn in self._self:
            if attn.to_q.bias is None and attn.to_k.bias is None and attn.to_v.bias is None:
                setattr(attn, FUSED_QKV, torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]).detach())
        if self._cross and all(a.to_k.bias is None and a.to_v.bias is None for a in self._cross):
            weights = [w for a in self._cross for w in (a.to_k.weight, a.to_v.weight)]
            self._cross_stacked = torch.cat(weights).detach()

    def unfuse_projections(self) -> None:
        """Drop the stacked weights of :meth:`fuse_projections`."""
        for attn in self._self:
            setattr(attn, FUSED_QKV, None)
        self._cross_stacked = None

    def _project_prompt(self, encoder_hidden_states: torch.Tensor) -> None:
        """This step's cross-attention keys and values of every layer, left on the modules (:data:`CROSS_KV`)."""
        device = encoder_hidden_states.device
        stacked = self._cross_stacked
        if stacked is not None and stacked.device == device:
            projected = F.linear(encoder_hidden_states, stacked)
            start = 0
            for attn in self._cross:
                width = attn.to_k.weight.shape[0]
                key = projected[..., start : start + width]
                value = projected[..., start + width : start + 2 * width]
                setattr(attn, CROSS_KV, (key, value))
                start += 2 * width
            return
        for attn in self._cross:
            # Not while CPU offload still has the weights elsewhere (the UNet's hook moves them at its call).
            if attn.to_k.weight.device == device:
                setattr(attn, CROSS_KV, (attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)))

    @property
    def reference_layers(self) -> list[str]:
        """Names of the attention processors that carry reference attention (16 for the SD2 UNet), in the order
        the UNet runs them."""
        return execution_order([name for name in self.unet.attn_processors if is_reference_layer(name)])

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        reference_sample: torch.Tensor | None,
        down_block_additional_residuals: list[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet prediction for ``sample``, attending to ``reference_sample`` (already noised and scaled).

        ``reference_sample`` is None to switch reference attention off. ControlNet residuals go to the main pass
        only.
        """
        stream = self.bank.stream
        try:
            if not self.bank.retain:
                self._project_prompt(encoder_hidden_states)
            if reference_sample is not None:
                if stream is not None:
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        self._reference_pass(reference_sample, timestep, encoder_hidden_states)
                else:
                    self._reference_pass(reference_sample, timestep, encoder_hidden_states)
                self.bank.mode = "read"
            return self.unet(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                return_dict=False,
            )[0]
        finally:
            if stream is not None and reference_sample is not None:
                torch.cuda.current_stream().wait_stream(stream)  # join: the step ends when both passes have
            if self.bank.retain:
                self.bank.mode = "off"
            else:
                self.bank.clear()
            for attn in self._cross:
                setattr(attn, CROSS_KV, None)

    def _reference_pass(self, reference_sample, timestep, encoder_hidden_states) -> None:
        self.bank.mode = "write"
        with contextlib.suppress(ReferenceComplete):
            self.unet(reference_sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)
