"""(IA)³ (Liu et al. 2022, "Infused Adapter by Inhibiting and Amplifying Inner Activations"): learned
vectors that rescale the keys, the values and the FFN hidden activation,

    K = l_k ⊙ (x W_k^T + b_k),   V = l_v ⊙ (x W_v^T + b_v),   FFN(x) = (l_ff ⊙ act(x W_1^T + b_1)) W_2^T + b_2

a multiplicative composition on three representations, initialised to ones (the base model at start).
`--attn-mode ia3` puts l_k, l_v on every attention, `--ffn-mode ia3` puts l_ff on every FFN (on fc2's
input); the preset `ia3` is both. Count: 2*d per attention sub-layer + d_ff per FFN. Export: merges
exactly into W_k, b_k, W_v, b_v (rows) and W_2 (columns).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from unifairseq.core.modules import LinearDelta

from . import register_method
from .base import ALL_KINDS, Method, Spec


class IA3(LinearDelta):
    """l ⊙ (x W^T + b) (`where="out"`: keys, values) or (l ⊙ x) W^T + b (`where="in"`: fc2's input)."""
    module_name = "delta_ia3"

    def __init__(self, features: int, where: str):
        super().__init__()
        assert where in ("in", "out"), where
        self.where = where
        self.l = nn.Parameter(torch.ones(features))

    def reset_delta_parameters(self) -> None:
        nn.init.ones_(self.l)

    def stored_count(self) -> int:
        return self.l.numel()

    def forward(self, x, W, b):
        l = self.l.to(x.dtype)
        if self.where == "in":
            return F.linear(x * l, W, b)
        return F.linear(x, W, b) * l

    def merged(self, W, b):
        l = self.l.to(W.dtype)
        if self.where == "in":
            return W * l.unsqueeze(0), b
        return W * l.unsqueeze(1), (None if b is None else b * l)

    def unmerged(self, W, b, record=None):
        l = self.l.to(W.dtype)
        if self.where == "in":
            return W / l.unsqueeze(0), b
        return W / l.unsqueeze(1), (None if b is None else b / l)


@register_method
class IA3Method(Method):
    name = "ia3"
    attn_modes = ("ia3",)
    ffn_modes = ("ia3",)
    module_name = IA3.module_name
    merge = "merge"
    sized = False
    presets = {"ia3": dict(attn_mode="ia3", ffn_mode="ia3")}

    def specs(self, cfg):
        out = []
        if cfg.attn_mode in self.attn_modes:
            out += [Spec(self.name, p, ALL_KINDS, dict(where="out")) for p in ("k_proj", "v_proj")]
        if cfg.ffn_mode in self.ffn_modes:
            out.append(Spec(self.name, "fc2", (), dict(where="in")))  # fc2's input: the FFN hidden activation
        return out

    def formula(self, spec, shape) -> int:
        if spec.site == "fc2":
            return shape.d_ff * shape.ffn_sublayers
        return shape.d * shape.attn(spec.kinds)

    def build(self, spec, in_features: int, out_features: int) -> IA3:
        where = spec.opts["where"]
        return IA3(in_features if where == "in" else out_features, where)

    def peft_form(self, spec):
        return "IA3"

    def peft_tensors(self, module):
        return {"ia3_l": module.l.unsqueeze(0 if module.where == "in" else 1)}

    def peft_config(self, cfg, modules):
        return dict(feedforward_modules=[n for n, m in modules.items() if m.where == "in"], init_ia3_weights=True)
