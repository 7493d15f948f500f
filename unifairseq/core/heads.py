"""Head-level attention math on plain tensors (no fairseq): the softmax functional form of prefix
tuning and its relatives, per head, with q = x W_q / sqrt(d_h), context K = C W_k, V = C W_v and
prefix P_k, P_v (H x l x d_h):

  concat        softmax(q [P_k; K]^T) [P_v; V]                         (prefix tuning)
  gate_add      (1 - λ) softmax(q K^T) V + λ softmax(q P_k^T) P_v       (its gated form, §3.1)
                λ = Σ exp(q P_k^T) / (Σ exp(q P_k^T) + Σ exp(q K^T))
  add           softmax(q K^T) V + softmax(q P_k^T) P_v                 (prefix, no gate)
  relu          softmax(q K^T) V + ReLU(q P_k^T) P_v                    (multi-head parallel adapter)

Masks apply to the context logits only; prefixes are always visible. Shapes: kvB is the number of
K/V rows (sentences), x the hypotheses per row (the beam in beamable cross-attention, else 1).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

FORMS = ("concat", "gate_add", "add", "relu")


def attention(q: Tensor, logits: Tensor, v: Tensor, dropout: Callable[[Tensor], Tensor]) -> Tuple[Tensor, Tensor]:
    """Plain attention. q: kvB x x x H x T x D, logits: ... x T x S, v: kvB x H x S x D."""
    probs = F.softmax(logits, dim=-1, dtype=torch.float32).type_as(q)
    return torch.einsum("bxhts,bhsd->bxhtd", dropout(probs), v), probs


def head_delta(form: str, q: Tensor, logits: Tensor, v: Tensor, P_k: Tensor, P_v: Tensor,
               dropout: Callable[[Tensor], Tensor], prefix_pad: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Attention with a head-level delta. q: kvB x x x H x T x D, logits (masked, context only):
    kvB x x x H x T x S, v: kvB x H x S x D, P_k/P_v: H x l x D -> (attn like q, the probabilities
    over the S context positions).

    Per-row prefixes (the delta bank): P_k/P_v kvB x H x l x D, padded to the longest l of the
    batch, and prefix_pad kvB x l (True = a padding slot). Padding slots get logit -inf (softmax
    forms: exp(-inf) = 0, so sums, λ and the normalisation are those of the unpadded prefix) or
    weight 0 (ReLU form), which is exactly the row's own shorter prefix."""
    P_k, P_v = P_k.to(q.dtype), P_v.to(q.dtype)
    l = P_k.size(-2)
    p = "bhld" if P_k.dim() == 4 else "hld"

    def context(weights: Tensor) -> Tensor:
        return torch.einsum("bxhts,bhsd->bxhtd", weights, v)

    def over_prefix(weights_p: Tensor) -> Tensor:
        return torch.einsum(f"bxhtl,{p}->bxhtd", weights_p, P_v)

    logits_p = torch.einsum(f"bxhtd,{p}->bxhtl", q, P_k)
    pad = None if prefix_pad is None else prefix_pad.view(prefix_pad.size(0), 1, 1, 1, l).to(torch.bool)
    if pad is not None and form != "relu":
        logits_p = logits_p.masked_fill(pad, float("-inf"))

    if form == "concat":
        probs = F.softmax(torch.cat([logits_p, logits], dim=-1), dim=-1, dtype=torch.float32).type_as(q)
        dropped = dropout(probs)
        return context(dropped[..., l:]) + over_prefix(dropped[..., :l]), probs[..., l:]

    attn, probs = attention(q, logits, v, dropout)
    if form == "relu":
        w = F.relu(logits_p)
        return attn + over_prefix(w if pad is None else w.masked_fill(pad, 0.0)), probs

    probs_p = F.softmax(logits_p, dim=-1, dtype=torch.float32).type_as(q)
    delta = over_prefix(dropout(probs_p))
    if form == "add":
        return attn + delta, probs
    assert form == "gate_add", form
    # λ(x) = Σ exp(prefix logits) / (Σ exp(prefix logits) + Σ exp(context logits)), in closed form
    lam = torch.sigmoid(torch.logsumexp(logits_p.float(), -1) - torch.logsumexp(logits.float(), -1))
    lam = lam.unsqueeze(-1).type_as(q)
    return (1 - lam) * attn + lam * delta, probs


def fused_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                    key_padding_mask: Optional[Tensor], prefix: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """The same attention (no head delta, or the concat prefix) through torch's fused kernel.
    q: B x H x T x D (scaled), k, v: B x H x S x D, attn_mask: T x S additive, key_padding_mask: B x S
    (True = padding), prefix: (P_k, P_v), H x l x D each, in front and never masked -> B x H x T x D."""
    B, _, T, _ = q.shape
    S = k.size(2)
    mask = None  # additive, broadcast to B x H x T x S
    if attn_mask is not None:
        mask = attn_mask.to(q.dtype).view(1, 1, T, S)
    if key_padding_mask is not None and key_padding_mask.dim() > 0:
        pad = torch.zeros(B, 1, 1, S, dtype=q.dtype, device=q.device).masked_fill(
            key_padding_mask.view(B, 1, 1, S).to(torch.bool), float("-inf"))
        mask = pad if mask is None else mask + pad
    if prefix is not None:
        P_k, P_v = prefix
        k = torch.cat([P_k.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([P_v.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
        if mask is not None:
            mask = F.pad(mask, (P_k.size(1), 0))
    if mask is not None:
        mask = mask.expand(B, 1, T, mask.size(-1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
