"""Reference attention: how Zero123++ feeds the condition image to an unmodified SD2 UNet.

Every denoising step runs the UNet twice (spec §3). The *reference pass* runs on the noised condition latent and
each self-attention layer (``attn1`` of every transformer block, 16 in SD2) records its input, i.e. the output of
the block's ``norm1``. The *main pass* runs on the sample, and each ``attn1`` appends the recorded tokens of the same
layer to its keys and values (queries come from the sample alone; same projections, no mask, no new weights).
Cross-attention (``attn2``) is untouched.

The state shared by the two passes is a :class:`ReferenceBank` that the processors hold, so nothing travels through
``cross_attention_kwargs``. :class:`ReferenceUNet` is the one callable that evaluates the model for a step
("reference pass + main pass"): fast paths (``torch.compile``, CUDA graphs) replace or wrap it as a whole.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

BankMode = Literal["off", "write", "read"]


class ReferenceBank:
    """The reference tokens recorded by one reference pass, keyed by layer name, and what the layers do now."""

    def __init__(self) -> None:
        self.mode: BankMode = "off"
        """"write": record inputs; "read": attend to the recorded ones (consuming them); "off": plain attention."""
        self.tokens: dict[str, torch.Tensor] = {}
        """Layer name → recorded ``norm1`` output of the reference pass, shape (batch, tokens, channels)."""


class ReferenceAttnProcessor:
    """Self-attention processor with reference attention; the attention itself is delegated to ``base``.

    ``base`` defaults to diffusers' ``AttnProcessor2_0`` (what the reference pipeline chains to), so in "read" mode
    the result is exactly ``base`` applied with ``encoder_hidden_states = cat([hidden_states, reference], dim=1)``.
    """

    def __init__(self, name: str, bank: ReferenceBank, base=None) -> None:
        self.name = name
        self.bank = bank
        self.base = base if base is not None else AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mode = self.bank.mode
        if mode == "write":
            self.bank.tokens[self.name] = hidden_states
        elif mode == "read":
            reference = self.bank.tokens.pop(self.name)
            encoder_hidden_states = torch.cat([hidden_states, reference], dim=1)
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask)


def is_reference_layer(processor_name: str) -> bool:
    """Whether a UNet attention processor (by its ``attn_processors`` name) gets reference attention: all ``attn1``."""
    return processor_name.endswith("attn1.processor")


class ReferenceUNet(torch.nn.Module):
    """A ``UNet2DConditionModel`` evaluated with reference attention: ``forward`` is one model evaluation of a step.

    Installing it replaces the UNet's attention processors (``attn1``: :class:`ReferenceAttnProcessor`, the rest:
    ``AttnProcessor2_0``); the UNet object itself stays a plain diffusers model (offload hooks, ``.to`` still work).
    """

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet
        self.bank = ReferenceBank()
        processors = {}
        for name in unet.attn_processors:
            processors[name] = (
                ReferenceAttnProcessor(name, self.bank) if is_reference_layer(name) else AttnProcessor2_0()
            )
        unet.set_attn_processor(processors)

    @property
    def reference_layers(self) -> list[str]:
        """Names of the attention processors that carry reference attention (16 for the SD2 UNet)."""
        return [name for name in self.unet.attn_processors if is_reference_layer(name)]

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
        only (spec §6).
        """
        try:
            if reference_sample is not None:
                self.bank.mode = "write"
                self.unet(reference_sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)
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
            self.bank.mode = "off"
            self.bank.tokens.clear()
