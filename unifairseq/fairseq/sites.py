"""The sites of a delta layer that are not a projection or an attention (fairseq glue; the projections
are core/modules.py's DeltaLinear, the attention fairseq/attention.py):

  FFNSite          where a layer's FFN adapters read the FFN input and write its output: the layer's own
                   adapter, or, in a bank model, each sample's own (core/bank_sites.py)
  DeltaLayerNorm   fairseq's LayerNorm whose bias a bank serves per sample (BitFit)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class FFNSite:
    """Where a layer's FFN adapters read and write: fc1 (or, pre-LN, final_layer_norm) hands over the FFN
    input x, fc2 its output h. It holds the layer's own adapter (`delta_ffn`, a registered module of the
    layer, or None) and, in a bank model, asks the bank for the samples' own adapters."""

    def __init__(self, own=None):
        self.own = own
        self.path: Optional[str] = None  # the layer's name in the model, set with the bank
        self.bank = None
        self._x: Optional[torch.Tensor] = None

    def read(self, x: torch.Tensor) -> None:
        if self.own is not None:
            self.own.read(x)
        if self.bank is not None:
            self._x = x

    def write(self, h: torch.Tensor) -> torch.Tensor:
        if self.bank is not None:
            x, self._x = self._x, None
            if self.bank.has(("ffn", self.path)):  # every row, the layer's own delta being one of the bank's
                return self.bank.adapters(("ffn", self.path), h, x)
        if self.own is not None:
            h = self.own.write(h)
        return h


class DeltaLayerNorm(nn.LayerNorm):
    """fairseq's LayerNorm (same parameter objects and names) whose bias a bank serves per sample
    (BitFit). Swapped in by the bank (model_bank.attach_bank): fairseq builds its layer norms inline."""

    batch_dim = 1  # T x B x C inside layers; layernorm_embedding sees B x T x C (0)
    path: Optional[str] = None

    @classmethod
    def swap(cls, ln: nn.LayerNorm, path: str) -> "DeltaLayerNorm":
        new = cls(ln.normalized_shape, eps=ln.eps, elementwise_affine=ln.elementwise_affine)
        new.weight, new.bias = ln.weight, ln.bias
        new._forward_pre_hooks.update(ln._forward_pre_hooks)  # the pre-LN residual read (above)
        new.path, new.batch_dim = path, (0 if path.endswith("layernorm_embedding") else 1)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bank = self.__dict__.get("_bank")
        if bank is None or not bank.has(("bias", self.path + ".bias")):
            return super().forward(x)
        return bank.layer_norm(self, x)
