"""DoRA (Liu et al. 2024): weight-decomposed LoRA. The adapted weight is a magnitude times a
direction, the direction being the LoRA-updated weight:

    V = W + s * W_up W_down                  (s = alpha / r, as LoRA)
    W' = m * V / ||V||_row                   (||.||_row: the norm of each output row, over the inputs)
    y = x W'^T + b = (m / ||V||_row) * (x W^T + s * dropout(x) W_down^T W_up^T) + b

m (one value per output feature) starts at ||W||_row of the pretrained weight and W_up at zero, so
W' = W at start (`from_base`: the glue sets m again whenever a base is loaded under fresh deltas).
The norm is not detached, so gradients are those of the formula above (peft detaches it to save
memory).
Count: r*(d_in + d_out) + d_out per projection. Export: merges exactly; the unmerge needs ||V||_row
(`unmerge_record`), which the file-level merge stores beside the merged weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_method
from .lora import LoRA, LoRAMethod, projection_shape


class DoRA(LoRA):
    """LoRA's W_down, W_up and scale s, plus the magnitude m; a different y and merge."""
    module_name = "delta_dora"

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(in_features, out_features, r, alpha, dropout)
        self.m = nn.Parameter(torch.ones(out_features))  # set by from_base once the host's weight is known

    def stored_count(self) -> int:
        return super().stored_count() + self.m.numel()

    def from_base(self, W: torch.Tensor):
        """m = ||W + s W_up W_down||_row (= ||W||_row while W_up is still zero): W' = W."""
        with torch.no_grad():
            return {"m": self.row_norm(W.float()).to(self.m.dtype)}

    def row_norm(self, W: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(W + self.delta_weight().to(W.dtype), dim=1)

    def forward(self, x, W, b):
        g = (self.m / self.row_norm(W)).to(x.dtype)  # d_out
        xd = self.dropout(x) if self.dropout is not None else x
        y = g * (F.linear(x, W) + self.scaling * self.W_up(self.W_down(xd)))
        return y if b is None else y + b

    def merged(self, W, b):
        V = W + self.delta_weight().to(W.dtype)
        return (self.m / torch.linalg.vector_norm(V, dim=1)).to(W.dtype).unsqueeze(1) * V, b

    def unmerge_record(self, W):
        """||V||_row: W' = m * V / ||V||_row alone does not tell V's scale (any multiple of V has W's direction)."""
        return self.row_norm(W).detach().clone()

    def unmerged(self, W, b, record=None):
        if record is None:
            raise ValueError("DoRA: unmerging needs ||V||_row, recorded when the weights were merged")
        V = W * (record / self.m).to(W.dtype).unsqueeze(1)
        return V - self.delta_weight().to(W.dtype), b


@register_method
class DoRAMethod(LoRAMethod):
    """A LoRA variant: the same flags, sites and validation; another module and count."""
    name = "dora"
    attn_modes = ("dora",)
    ffn_modes = ("dora",)
    module_cls = DoRA
    module_name = DoRA.module_name
    presets = {"dora_attn": dict(attn_mode="dora", attn_bn=16, lora_alpha=32.0, lora_dropout=0.1)}

    def formula(self, spec, shape) -> int:
        d_in, d_out, n = projection_shape(spec, shape)
        return super().formula(spec, shape) + d_out * n  # and the magnitude m

    def peft_tensors(self, module):
        return dict(super().peft_tensors(module), lora_magnitude_vector=module.m)

    def peft_config(self, cfg, modules):
        return dict(super().peft_config(cfg, modules), use_dora=True)  # peft's LoRA with use_dora
