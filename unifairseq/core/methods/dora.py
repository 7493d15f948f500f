"""DoRA (Liu et al. 2024): weight-decomposed LoRA. The adapted weight is a magnitude times a
direction, the direction being the LoRA-updated weight:

    V = W + s * W_up W_down                  (s = alpha / r, as LoRA)
    W' = m * V / ||V||_row                   (||.||_row: the norm of each output row, over the inputs)
    y = x W'^T + b = (m / ||V||_row) * (x W^T + s * dropout(x) W_down^T W_up^T) + b

m (one value per output feature) starts at ||W||_row of the pretrained weight and W_up at zero, so
W' = W at start. m is set from the first base weight the layer computes with (the pretrained weights
are loaded after the model is built): it is stored as NaN until then. The norm is not detached, so
gradients are those of the formula above (peft detaches it to save memory).
Count: r*(d_in + d_out) + d_out per projection. Export: merges exactly; the unmerge needs ||V||_row
(`unmerge_record`), which the file-level merge stores beside the merged weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from unifairseq.core.modules import LinearDelta

from . import register_method
from .base import Method
from .lora import check_alpha, projection_shape, projection_specs


class DoRA(LinearDelta):
    module_name = "delta_dora"

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.W_down = nn.Linear(in_features, r, bias=False)
        self.W_up = nn.Linear(r, out_features, bias=False)
        self.m = nn.Parameter(torch.empty(out_features))
        self.r, self.scaling = r, alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.reset_delta_parameters()

    def reset_delta_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.W_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.W_up.weight)
        with torch.no_grad():
            self.m.fill_(float("nan"))  # set from the pretrained weight it first sees

    def stored_count(self) -> int:
        return self.W_down.weight.numel() + self.W_up.weight.numel() + self.m.numel()

    @torch.no_grad()
    def init_magnitude(self, W: torch.Tensor) -> None:
        """m = ||W + s W_up W_down||_row (= ||W||_row while W_up is still zero): W' = W."""
        if torch.isnan(self.m).any():
            self.m.copy_(self.row_norm(W).to(self.m.dtype))

    def row_norm(self, W: torch.Tensor) -> torch.Tensor:
        V = W + (self.scaling * (self.W_up.weight @ self.W_down.weight)).to(W.dtype)
        return torch.linalg.vector_norm(V, dim=1)

    def forward(self, x, W, b):
        self.init_magnitude(W)
        g = (self.m / self.row_norm(W)).to(x.dtype)  # d_out
        xd = self.dropout(x) if self.dropout is not None else x
        y = g * (F.linear(x, W) + self.scaling * self.W_up(self.W_down(xd)))
        return y if b is None else y + b

    def merged(self, W, b):
        self.init_magnitude(W)
        V = W + (self.scaling * (self.W_up.weight @ self.W_down.weight)).to(W.dtype)
        return (self.m / torch.linalg.vector_norm(V, dim=1)).to(W.dtype).unsqueeze(1) * V, b

    def unmerge_record(self, W):
        """||V||_row: W' = m * V / ||V||_row alone does not tell V's scale (any multiple of V has W's direction)."""
        self.init_magnitude(W)
        return self.row_norm(W).detach().clone()

    def unmerged(self, W, b, record=None):
        if record is None:
            raise ValueError("DoRA: unmerging needs ||V||_row, recorded when the weights were merged")
        V = W * (record / self.m).to(W.dtype).unsqueeze(1)
        return V - (self.scaling * (self.W_up.weight @ self.W_down.weight)).to(W.dtype), b


@register_method
class DoRAMethod(Method):
    name = "dora"
    attn_modes = ("dora",)
    ffn_modes = ("dora",)
    module_name = DoRA.module_name
    merge = "merge"
    presets = {"dora_attn": dict(attn_mode="dora", attn_bn=16, lora_alpha=32.0, lora_dropout=0.1)}

    def validate(self, cfg, bad) -> None:
        check_alpha(cfg, bad)

    def specs(self, cfg):
        return projection_specs(self.name, cfg, self.attn_modes, self.ffn_modes)

    def formula(self, spec, shape) -> int:
        d_in, d_out, n = projection_shape(spec, shape)
        return (spec.opts["r"] * (d_in + d_out) + d_out) * n  # W_down, W_up and the magnitude m

    def build(self, spec, in_features: int, out_features: int) -> DoRA:
        o = spec.opts
        return DoRA(in_features, out_features, o["r"], o["alpha"], o["dropout"])
