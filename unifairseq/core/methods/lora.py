"""LoRA (Hu et al. 2021): the linear functional form on a projection, parallel insertion, scaled add:

    y = x W^T + b + s * dropout(x) W_down^T W_up^T,      s = alpha / r

on W_q and W_v (`--attn-mode lora`) or W_1 and W_2 (`--ffn-mode lora`). Init: W_down kaiming-uniform,
W_up zero (Δh = 0 at start). Count: r*(d_in + d_out) per projection (4*r*d per attention sub-layer,
10*r*d per FFN when d_ff = 4d). Export: merges exactly, W' = W + s * W_up W_down.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from unifairseq.core.modules import LinearDelta

from . import register_method
from .base import ALL_KINDS, Method, Spec


class LoRA(LinearDelta):
    module_name = "delta_lora"

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.W_down = nn.Linear(in_features, r, bias=False)  # A: r x in
        self.W_up = nn.Linear(r, out_features, bias=False)  # B: out x r
        self.r, self.scaling = r, alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.reset_delta_parameters()

    def reset_delta_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.W_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.W_up.weight)

    def stored_count(self) -> int:
        return self.W_down.weight.numel() + self.W_up.weight.numel()

    def delta_weight(self) -> torch.Tensor:
        """s * W_up W_down in nn.Linear's (out, in) layout."""
        return self.scaling * (self.W_up.weight @ self.W_down.weight)

    def forward(self, x, W, b):
        xd = self.dropout(x) if self.dropout is not None else x
        return F.linear(x, W, b) + self.scaling * self.W_up(self.W_down(xd))

    def blocks_forward(self, p, x, W, b):
        """The forward of n LoRA deltas of this structure at once, each on its own block of rows (the
        delta bank, core/bank_group.py): p the stacked parameters ([n, r, in], [n, out, r]), x [n, ..., in]
        dense, W and b the shared base (b, or BitFit's [n, out] per-delta biases). One matmul for the
        base, two batched ones for the deltas -- the same formula as forward. None (the generic
        per-delta path) where dropout draws random masks."""
        if type(self).forward is not LoRA.forward or (self.dropout is not None and self.training):
            return None  # a subclass with its own formula (DoRA), or random dropout masks
        n, shape = x.size(0), x.shape
        xf = x.reshape(n, -1, shape[-1])  # [n, rows, in]
        y = F.linear(xf, W)
        if b is not None:
            y = y + (b.unsqueeze(1) if b.dim() == 2 else b)
        low = torch.bmm(xf, p["W_down.weight"].transpose(1, 2))  # [n, rows, r]
        y = y + self.scaling * torch.bmm(low, p["W_up.weight"].transpose(1, 2))
        return y.view(*shape[:-1], y.size(-1))

    def merged(self, W, b):
        return W + self.delta_weight().to(W.dtype), b

    def unmerged(self, W, b, record=None):
        return W - self.delta_weight().to(W.dtype), b


def check_alpha(cfg, bad) -> None:
    if cfg.lora_alpha == 0:
        bad("lora_alpha", "0 makes the LoRA scale s = alpha/r zero, which silently switches LoRA off; "
            "set a positive alpha (e.g. 2*r)")
    # NaN/Infinity would train or merge non-finite weights; a negative alpha flips the delta's sign
    if not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha > 0):
        bad("lora_alpha", f"{cfg.lora_alpha} is not a positive finite number; the LoRA scale is s = alpha/r "
            "(e.g. alpha = 2*r)")


def projection_specs(method: str, cfg, attn_modes, ffn_modes):
    """LoRA-family sites: W_q and W_v of every attention, or W_1 and W_2 of every FFN."""
    out = []
    opts = dict(alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    if cfg.attn_mode in attn_modes:
        out += [Spec(method, p, ALL_KINDS, dict(opts, r=cfg.attn_bn)) for p in ("q_proj", "v_proj")]
    if cfg.ffn_mode in ffn_modes:
        out += [Spec(method, p, (), dict(opts, r=cfg.ffn_bn)) for p in ("fc1", "fc2")]
    return out


def projection_shape(spec, shape):
    """(d_in, d_out, how many such projections) of a projection site."""
    if spec.site == "fc1":
        return shape.d, shape.d_ff, shape.ffn_sublayers
    if spec.site == "fc2":
        return shape.d_ff, shape.d, shape.ffn_sublayers
    return shape.d, shape.d, shape.attn(spec.kinds)


@register_method
class LoRAMethod(Method):
    name = "lora"
    attn_modes = ("lora",)
    ffn_modes = ("lora",)
    module_cls = LoRA  # variants (DoRA) subclass this method and swap the module
    module_name = LoRA.module_name
    merge = "merge"
    presets = {
        "lora_attn": dict(attn_mode="lora", attn_bn=16, lora_alpha=32.0, lora_dropout=0.1),
        "lora_ffn": dict(ffn_mode="lora", ffn_bn=102, lora_alpha=408.0, lora_dropout=0.1),
    }

    def validate(self, cfg, bad) -> None:
        check_alpha(cfg, bad)

    def specs(self, cfg):
        return projection_specs(self.name, cfg, self.attn_modes, self.ffn_modes)

    def formula(self, spec, shape) -> int:
        d_in, d_out, n = projection_shape(spec, shape)
        return spec.opts["r"] * (d_in + d_out) * n

    def build(self, spec, in_features: int, out_features: int) -> LoRA:
        o = spec.opts
        return self.module_cls(in_features, out_features, o["r"], o["alpha"], o["dropout"])

    def peft_form(self, spec):
        return "LORA"

    def peft_tensors(self, module):
        return {"lora_A.weight": module.W_down.weight, "lora_B.weight": module.W_up.weight}

    def peft_config(self, cfg, modules):
        ranks = {n: m.r for n, m in modules.items()}
        r0 = max(set(ranks.values()), key=list(ranks.values()).count)
        return dict(r=r0, lora_alpha=float(cfg.lora_alpha), lora_dropout=float(cfg.lora_dropout), use_dora=False,
                    bias="none", init_lora_weights=True, use_rslora=False,
                    # peft's scale is lora_alpha / r per module, unifairseq's alpha / r: the same alpha, each r
                    rank_pattern={re.escape(n): r for n, r in ranks.items() if r != r0}, alpha_pattern={})
