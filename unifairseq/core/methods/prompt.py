"""Prompt tuning (Lester et al. 2021): l learned vectors prepended to the encoder's token embeddings
(the modified representation is the input). Count: l*d. No merge: the vectors are extra inputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from unifairseq.core.modules import DeltaModule

from . import register_method
from .base import Method, Spec


class PromptEmbedding(DeltaModule):
    def __init__(self, length: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(length, dim))  # l x C
        self.reset_delta_parameters()

    def reset_delta_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)

    def stored_count(self) -> int:
        return self.weight.numel()

    def prepend(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """B x T x C -> B x (l+T) x C."""
        B = token_embeddings.size(0)
        prompt = self.weight.to(token_embeddings.dtype).unsqueeze(0).expand(B, -1, -1)
        return torch.cat([prompt, token_embeddings], dim=1)


@register_method
class PromptTuning(Method):
    name = "prompt"
    attn_modes = ("prompt_tuning",)
    presets = {"prompt": dict(attn_mode="prompt_tuning", attn_bn=200)}

    def specs(self, cfg):
        return [Spec(self.name, "embed", (), dict(l=cfg.attn_bn))]

    def formula(self, spec, shape) -> int:
        return spec.opts["l"] * shape.d

    def build(self, spec, dim: int) -> PromptEmbedding:
        return PromptEmbedding(spec.opts["l"], dim)
