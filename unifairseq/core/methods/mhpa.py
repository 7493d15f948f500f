"""Multi-head parallel adapter (paper §4.2, "MH PA"): the prefix machinery with a ReLU instead of
the softmax and no normalisation, Δh = ReLU(q P_k^T) P_v per head, added to the attention output.

P_k plays W_down and P_v plays W_up (LoRA-style init: P_v = 0, so Δh = 0 at start). Count: 2*r*d per
attention sub-layer. No merge: it adds computation a plain model lacks.
"""
from __future__ import annotations

from . import register_method
from .base import ALL_KINDS, Method, Spec
from .prefix import PrefixProvider, build_provider


@register_method
class MultiHeadParallelAdapter(Method):
    name = "mhpa"
    attn_modes = ("adapter",)
    attn_options = ("mh_adapter",)
    presets = {"mhpa": dict(attn_mode="adapter", attn_option="mh_adapter", attn_bn=30)}

    def specs(self, cfg):
        return [Spec(self.name, "heads", ALL_KINDS, dict(l=cfg.attn_bn, mid_dim=0, dropout=cfg.prefix_dropout,
                                                         zero_values=True, form="relu"))]

    def formula(self, spec, shape) -> int:
        return 2 * spec.opts["l"] * shape.d * shape.attn(spec.kinds)

    def build(self, spec, num_layers: int, dim: int, heads: int) -> PrefixProvider:
        return build_provider(spec, num_layers, dim, heads)
