"""Prefix tuning (Li & Liang 2021): l learned key/value vectors per layer in front of each head's
context. Functional form softmax(q P_k^T) P_v, modified representation the attention heads,
parallel insertion, gated-add composition (paper §3.1; the head math is in core/heads.py):

    concat     softmax(q [P_k; K]^T) [P_v; V]                        (--attn-option concat)
    gate_add   (1 - λ) softmax(q K^T) V + λ softmax(q P_k^T) P_v      (cross_attn + gate_add)
    add        softmax(q K^T) V + softmax(q P_k^T) P_v                (cross_attn + add)
    relu       softmax(q K^T) V + ReLU(q P_k^T) P_v                   (cross_attn_relu: MH PA's form)

Count: 2*l*d per attention sub-layer (the stored vectors, however they are parametrized).
Export: folds the reparametrization MLP into the stored vectors; no merge into the base.

Prefix vectors P_k, P_v for every layer of one attention kind (`PrefixProvider`):

Two parametrizations (paper §2, reference code):

* reparametrized (`mid_dim > 0`, training): Emb(l, d) -> Linear(d, mid_dim) -> tanh
  -> Linear(mid_dim, L*2*d), one MLP shared by the L layers of one attention kind
  (encoder self, decoder self, cross). About 62M parameters on BART-large that exist
  only to make training stable; `export` folds them into static vectors.
* direct (`mid_dim == 0`): a Parameter of shape (L, 2, l, d).

The same module serves the multi-head parallel adapter (direct P_k, P_v with a ReLU
instead of the softmax), initialised so that Δh = 0 at start (P_v = 0).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from unifairseq.core.modules import DeltaModule

from . import register_method
from .base import ALL_KINDS, Method, Spec


class PrefixProvider(DeltaModule):
    def __init__(self, num_layers: int, length: int, dim: int, mid_dim: int = 0,
                 dropout: float = 0.0, zero_values: bool = False, head_dim: int = 0):
        super().__init__()
        self.head_dim = head_dim
        self.num_layers, self.length, self.dim, self.mid_dim = num_layers, length, dim, mid_dim
        self.zero_values = zero_values
        self.dropout = dropout
        if mid_dim > 0:
            self.wte = nn.Embedding(length, dim)
            self.mlp_down = nn.Linear(dim, mid_dim)
            self.mlp_up = nn.Linear(mid_dim, num_layers * 2 * dim)
            self.prefix = None
        else:
            self.prefix = nn.Parameter(torch.empty(num_layers, 2, length, dim))
        self._cache = None  # (key, tensor L x 2 x l x d) for inference without grad
        # training: the L x 2 x l x d output of one MLP pass, shared by the layers of one forward of
        # the encoder/decoder (begin_pass/end_pass, called by layers.py); None outside a pass
        self._pass: Optional[list] = None
        self.reset_delta_parameters()

    @classmethod
    def from_state(cls, t) -> "PrefixProvider":
        """A provider with the sizes and values of a saved one (its state dict)."""
        if "prefix" in t:
            L, _, length, dim = t["prefix"].shape
            prov = cls(L, length, dim)
        else:
            length, dim = t["wte.weight"].shape
            prov = cls(t["mlp_up.weight"].shape[0] // (2 * dim), length, dim, mid_dim=t["mlp_down.weight"].shape[0])
        prov.load_state_dict(t)
        return prov

    def stored_count(self) -> int:
        return self.num_layers * 2 * self.length * self.dim  # what the paper counts, MLP or not

    def reset_delta_parameters(self) -> None:
        self._cache = None
        if self.prefix is None:
            nn.init.normal_(self.wte.weight, std=0.02)  # fairseq's Embedding/BERT init
            for lin in (self.mlp_down, self.mlp_up):
                nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(lin.in_features)
                nn.init.uniform_(lin.bias, -bound, bound)
        elif self.zero_values:
            # multi-head PA, LoRA-style: P_k plays W_down (uniform, fan-in = the head dim, set by
            # the caller through `dim`), P_v plays W_up and starts at zero, so Δh = 0 at init
            with torch.no_grad():
                bound = 1 / math.sqrt(self.head_dim or self.dim)
                self.prefix[:, 0].uniform_(-bound, bound)
                self.prefix[:, 1].zero_()
        else:
            nn.init.normal_(self.prefix, std=0.02)

    # ------------------------------------------------------------------ math
    def _mlp(self, layer: Optional[int]) -> torch.Tensor:
        """Run the reparametrization MLP for one layer (l x 2 x d) or all (L x 2 x l x d)."""
        h = torch.tanh(self.mlp_down(self.wte.weight))  # l x mid
        if layer is None:
            kv = self.mlp_up(h)  # l x (L*2*d)
            return kv.view(self.length, self.num_layers, 2, self.dim).permute(1, 2, 0, 3)
        # only this layer's rows of the up projection: the same numbers, 1/L of the work
        rows = slice(layer * 2 * self.dim, (layer + 1) * 2 * self.dim)
        kv = F.linear(h, self.mlp_up.weight[rows], self.mlp_up.bias[rows])  # l x 2d
        return kv.view(self.length, 2, self.dim).transpose(0, 1)

    def all_layers(self) -> torch.Tensor:
        """All prefix vectors, L x 2 x l x d: what the paper counts and what export stores."""
        if self.prefix is not None:
            return self.prefix
        return self._mlp(None)

    def forward(self, layer: int) -> torch.Tensor:
        """P for one layer: 2 x l x d (index 0: keys, 1: values)."""
        if self.prefix is not None:
            kv = self.prefix[layer]
        elif torch.is_grad_enabled() and self._pass is not None:
            # training inside an encoder/decoder forward: one MLP pass for all layers. Its backward
            # writes mlp_up's gradient once; a per-layer row slice of mlp_up would make autograd
            # materialise (zero-fill) a full-size gradient for every layer and add them up.
            if not self._pass:
                self._pass.append(self._mlp(None))
            kv = self._pass[0][layer]
        elif torch.is_grad_enabled():
            # training outside a marked pass (e.g. activation checkpointing re-running one layer):
            # only this layer's rows, so autograd sees this layer's graph
            kv = self._mlp(layer)
        else:
            kv = self._cached()[layer]
        if self.dropout > 0 and self.training:
            kv = F.dropout(kv, p=self.dropout, training=True)
        return kv

    def begin_pass(self) -> None:
        self._pass = []

    def end_pass(self) -> None:
        self._pass = None

    def _cached(self) -> torch.Tensor:
        """Inference: the MLP runs once per set of weights, not once per layer or decoding step.
        Keyed on the parameters' in-place version counters (load_state_dict, no_grad updates) and on
        train()/eval() switches (fairseq's optimizer steps: see DeltaModule.mode_switches)."""
        params = (self.wte.weight, self.mlp_down.weight, self.mlp_down.bias, self.mlp_up.weight, self.mlp_up.bias)
        key = (self.mode_switches, *((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._mlp(None).detach())
        return self._cache[1]

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by the static vectors it produces (export for inference)."""
        if self.prefix is not None:
            return
        P = self._mlp(None).detach().clone()
        del self.wte, self.mlp_down, self.mlp_up
        self.mid_dim = 0
        self.prefix = nn.Parameter(P)
        self._cache = None

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, l={self.length}, d={self.dim}, mid_dim={self.mid_dim}"


def build_provider(spec: Spec, num_layers: int, dim: int, heads: int) -> PrefixProvider:
    o = spec.opts
    return PrefixProvider(num_layers, o["l"], dim, mid_dim=o["mid_dim"], dropout=o["dropout"],
                          zero_values=o["zero_values"], head_dim=dim // heads)


@register_method
class Prefix(Method):
    name = "prefix"
    attn_modes = ("prefix", "prefix_nomlp")
    attn_options = ("concat", "cross_attn", "cross_attn_relu")
    merge = "fold"
    presets = {
        "prefix": dict(attn_mode="prefix", attn_option="concat", attn_bn=200, mid_dim=800),
        "gated_prefix": dict(attn_mode="prefix", attn_option="cross_attn", attn_composition="gate_add",
                             attn_bn=30, mid_dim=800),
    }

    def gate_capable(self, cfg) -> bool:
        return cfg.attn_option == "cross_attn"  # the softmax prefix computed as its own attention

    def validate(self, cfg, bad) -> None:
        if cfg.attn_mode == "prefix" and cfg.mid_dim <= 0:
            bad("mid_dim", f"the prefix reparametrization MLP needs --mid-dim > 0, got {cfg.mid_dim}; "
                "use --attn-mode prefix_nomlp for direct prefix vectors")

    def specs(self, cfg):
        form = {"concat": "concat", "cross_attn_relu": "relu"}.get(cfg.attn_option, cfg.attn_composition)
        return [Spec(self.name, "heads", ALL_KINDS, dict(
            l=cfg.attn_bn, mid_dim=cfg.mid_dim if cfg.attn_mode == "prefix" else 0, dropout=cfg.prefix_dropout,
            zero_values=False, form=form))]

    def formula(self, spec, shape) -> int:
        return 2 * spec.opts["l"] * shape.d * shape.attn(spec.kinds)  # P_k, P_v: 2*l*d

    def build(self, spec, num_layers: int, dim: int, heads: int) -> PrefixProvider:
        return build_provider(spec, num_layers, dim, heads)

    def folded_args(self) -> dict:
        """The flags of the exported model once the MLP is folded into stored vectors."""
        return dict(attn_mode="prefix_nomlp")
