"""How each site of the delta layers computes a mixed batch (a mixin of core/bank.py's Bank).

The one set of delta layers (core/modules.py DeltaLinear, fairseq/attention.py, fairseq/layers.py)
serves single-delta and bank models alike: a site with a bank (`_bank`) whose deltas have something
there (`bank.has(key)`) hands its tensors over, and the bank computes every sample with its own
delta; otherwise the site runs as it is. T x B x C inside layers (batch dim 1).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from unifairseq.core import heads


class SiteComputations:
    """Needs of the Bank: ids_for, has, route, apply, bias_rows, prefix_rows (core/bank.py)."""

    def linear(self, host, x: torch.Tensor) -> torch.Tensor:
        """A projection (host: its nn.Linear, base weight and bias) for the rows of x [T, B, C_in]: LoRA /
        DoRA / (IA)³ of each sample's delta, BitFit's bias rows, the base for the rest."""
        key = ("proj", host.path)
        ids = self.ids_for(x.size(1))
        b = self.bias_rows(host.path + ".bias", ids, host.bias)  # BitFit rows, or None

        def rows(t, sel, d):
            return t if sel is None else t.index_select(d, sel)

        def base(sel):
            xs = rows(x, sel, 1)
            return F.linear(xs, host.weight, host.bias) if b is None else F.linear(xs, host.weight) + rows(b, sel, 0)

        if b is None:
            return self.route(key, ids, 1, lambda sel: (rows(x, sel, 1), host.weight, host.bias),
                              (1, None, None), base)
        return self.route(key, ids, 1, lambda sel: (rows(x, sel, 1), host.weight, rows(b, sel, 0)),
                          (1, None, "r"), base)

    def layer_norm(self, host, x: torch.Tensor) -> torch.Tensor:
        """A layer norm with BitFit's per-sample biases (host.batch_dim: where the samples are)."""
        ids = self.ids_for(x.size(host.batch_dim))
        b = self.bias_rows(host.path + ".bias", ids, host.bias)
        y = F.layer_norm(x, host.normalized_shape, host.weight, None, host.eps)
        return y + (b.unsqueeze(0) if host.batch_dim == 1 else b.unsqueeze(1))

    def adapters(self, key, h: torch.Tensor, x: Optional[torch.Tensor]) -> torch.Tensor:
        """Adapters at an FFN or an attention output: h [T, B, C] the sub-layer output, x its input
        (what parallel adapters read)."""
        ids = self.ids_for(h.size(1))
        return self.apply(key, h, ids, 1, lambda sel: (h, x) if sel is None else
                          (h.index_select(1, sel), x.index_select(1, sel)), (1, 1))

    def head_attention(self, key, layer: int, heads_n: int, q: torch.Tensor, logits: torch.Tensor,
                       v: torch.Tensor, dropout) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attention with each sample's prefix (every head form) at one attention of one layer;
        q: kvB x x x H x T x D, as core/heads.py."""
        ids = self.ids_for(q.size(0))  # one id per K/V row (= per sentence in beamable cross-attention)
        done = torch.zeros(q.size(0), dtype=torch.bool, device=q.device)
        parts = []
        groups = self.prefix_rows(key, layer, ids, heads_n)
        if len(groups) == 1 and groups[0][1].numel() == q.size(0):  # one form for every row: no gather
            form, _, P_k, P_v, pad = groups[0]
            return heads.head_delta(form, q, logits, v, P_k, P_v, dropout, pad)
        for form, rows, P_k, P_v, pad in groups:
            parts.append((rows, heads.head_delta(form, q.index_select(0, rows), logits.index_select(0, rows),
                                                 v.index_select(0, rows), P_k, P_v, dropout, pad)))
            done[rows] = True
        rest = (~done).nonzero().squeeze(1)
        if rest.numel():
            parts.append((rest, heads.attention(q.index_select(0, rest), logits.index_select(0, rest),
                                                v.index_select(0, rest), dropout)))
        attn = q.new_zeros(q.shape)
        probs = q.new_zeros(logits.shape)
        for rows, (a, p) in parts:
            attn = attn.index_copy(0, rows, a)
            probs = probs.index_copy(0, rows, p.to(probs.dtype))
        return attn, probs
