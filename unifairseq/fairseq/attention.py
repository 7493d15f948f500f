"""Multi-head attention with the attention-side deltas.

fairseq's `MultiheadAttention.forward` has a fast path that hands `q_proj.weight`
etc. straight to `F.multi_head_attention_forward`, which would silently bypass any
delta on a projection (LoRA) and has no place for prefixes. This subclass keeps
fairseq's module (names, incremental-state buffers, reordering) and replaces only
`forward` with one attention computation that every method goes through, in
training, in a full forward and in incremental decoding alike.

Head-level deltas (modified representation = attention heads), per head with
q = x W_q / sqrt(d_h), context K = C W_k, V = C W_v and prefix P_k, P_v (l x d_h):

  concat        softmax(q [P_k; K]^T) [P_v; V]                         (prefix tuning)
  gate_add      (1 - λ) softmax(q K^T) V + λ softmax(q P_k^T) P_v       (its gated form, §3.1)
                λ = Σ exp(q P_k^T) / (Σ exp(q P_k^T) + Σ exp(q K^T))
  add           softmax(q K^T) V + softmax(q P_k^T) P_v                 (prefix, no gate)
  relu          softmax(q K^T) V + ReLU(q P_k^T) P_v                    (multi-head parallel adapter)

Padding and causal masks apply to the context logits only; prefixes are always visible.
Attention-output deltas (parallel / sequential adapter) act on the out_proj output.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq.modules.multihead_attention import MultiheadAttention

from unifairseq.core.config import DeltaConfig
from unifairseq.core.modules import Adapter, LoRALinear
from unifairseq.core.prefix import PrefixProvider


def head_form(delta: DeltaConfig) -> Optional[str]:
    """How the heads are modified: concat | gate_add | add | relu, or None."""
    if not delta.head_delta:
        return None
    if delta.attn_option in ("cross_attn_relu", "mh_adapter"):
        return "relu"
    if delta.attn_option == "concat":
        return "concat"
    return delta.attn_composition  # cross_attn: add or gate_add


class DeltaMultiheadAttention(MultiheadAttention):
    def __init__(self, embed_dim: int, num_heads: int, *, delta: DeltaConfig, layer_idx: int,
                 prefix: Optional[PrefixProvider] = None, out_adapter: Optional[Adapter] = None,
                 **mha_kwargs):
        super().__init__(embed_dim, num_heads, **mha_kwargs)
        if self.use_xformers or self.bias_k is not None or self.add_zero_attn:
            raise ValueError("unifairseq deltas do not support xformers, add_bias_kv or add_zero_attn attention")
        if delta.attn_mode == "lora":  # LoRA on W_q and W_v (Hu et al.), s = alpha / r
            self.q_proj = LoRALinear.from_linear(self.q_proj, delta.attn_bn, delta.lora_alpha, delta.lora_dropout)
            self.v_proj = LoRALinear.from_linear(self.v_proj, delta.attn_bn, delta.lora_alpha, delta.lora_dropout)
        self.head_form = head_form(delta)
        assert (self.head_form is None) == (prefix is None)
        # shared by all layers of this attention kind and registered on the encoder/decoder:
        # keep a plain reference so its parameters are not registered (and saved) L times
        object.__setattr__(self, "prefix_source", prefix)
        self.layer_idx = layer_idx
        self.delta_out = out_adapter

    def prefix_kv(self) -> Tuple[Tensor, Tensor]:
        """This layer's P_k, P_v, each H x l x d_h."""
        P = self.prefix_source(self.layer_idx)  # 2 x l x C
        l = P.size(1)
        P = P.view(2, l, self.num_heads, self.head_dim).transpose(1, 2)
        return P[0], P[1]

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if before_softmax:
            raise NotImplementedError("before_softmax is not supported by unifairseq attention")
        need_weights = need_weights or need_head_weights
        T, B, C = query.size()
        H, D = self.num_heads, self.head_dim

        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else None
        q = self.q_proj(query) * self.scaling  # T x B x C
        if saved is not None and static_kv and "prev_key" in saved:
            k = v = None  # encoder K/V were computed at the first decoding step
        elif self.self_attention:
            k, v = self.k_proj(query), self.v_proj(query)
        else:
            if (self.encoder_decoder_attention and incremental_state is not None and self.beam_size > 1
                    and key.size(1) == B):
                # beamable cross-attention (fairseq's layout, set by set_beam_size for beam search):
                # one K/V per source sentence
                key = value = key.view(key.size(0), -1, self.beam_size, key.size(2))[:, :, 0]
                if key_padding_mask is not None:
                    key_padding_mask = key_padding_mask.view(-1, self.beam_size, key_padding_mask.size(1))[:, 0]
            k, v = self.k_proj(key), self.v_proj(value)

        if k is not None:  # S x kvB x C -> kvB x H x S x D (fairseq's cache layout)
            kv_B = k.size(1)
            k = k.contiguous().view(-1, kv_B, H, D).permute(1, 2, 0, 3)
            v = v.contiguous().view(-1, kv_B, H, D).permute(1, 2, 0, 3)
        if saved is not None:
            if "prev_key" in saved:
                prev_k, prev_v = saved["prev_key"], saved["prev_value"]
                k = prev_k if static_kv else torch.cat([prev_k, k], dim=2)
                v = prev_v if static_kv else torch.cat([prev_v, v], dim=2)
            key_padding_mask = MultiheadAttention._append_prev_key_padding_mask(
                key_padding_mask=key_padding_mask, prev_key_padding_mask=saved.get("prev_key_padding_mask"),
                batch_size=k.size(0), src_len=k.size(2), static_kv=static_kv)
            saved["prev_key"], saved["prev_value"] = k, v
            saved["prev_key_padding_mask"] = key_padding_mask
            self._set_input_buffer(incremental_state, saved)
        kv_B, S = k.size(0), k.size(2)
        x = B // kv_B  # hypotheses per K/V row: the beam in beamable cross-attention, else 1

        # the fused kernel needs the prefix concatenated to K/V: a copy of the whole cache at every
        # decoding step, so incremental decoding with a prefix keeps the explicit path
        fused_ok = self.head_form is None or (self.head_form == "concat" and incremental_state is None)
        if x == 1 and not need_weights and fused_ok and not self._dropout_active():
            attn = self._fused_attention(q, k, v, attn_mask, key_padding_mask)  # B x H x T x D
            out = self.out_proj(attn.permute(2, 0, 1, 3).reshape(T, B, C))
            return (out if self.delta_out is None else self.delta_out(out, query)), None

        # T x B x C -> kvB x x x H x T x D
        q = q.contiguous().view(T, kv_B, x, H, D).permute(1, 2, 3, 0, 4)
        logits = torch.einsum("bxhtd,bhsd->bxhts", q, k)
        if attn_mask is not None:  # T x S, additive (causal mask)
            logits = logits + attn_mask
        if key_padding_mask is not None and key_padding_mask.dim() > 0:  # fairseq uses a 0-dim tensor for none
            logits = logits.masked_fill(key_padding_mask.view(kv_B, 1, 1, 1, S).to(torch.bool), float("-inf"))

        if self.head_form is None:
            probs = F.softmax(logits, dim=-1, dtype=torch.float32).type_as(q)
            attn = torch.einsum("bxhts,bhsd->bxhtd", self.dropout_module(probs), v)
        else:
            attn, probs = self._head_delta(q, logits, v)

        attn = attn.permute(3, 0, 1, 2, 4).reshape(T, B, C)  # T x B x C
        out = self.out_proj(attn)
        if self.delta_out is not None:  # adapter on the attention output; parallel reads the input x
            out = self.delta_out(out, query)

        weights: Optional[Tensor] = None
        if need_weights:
            weights = probs.reshape(B, H, T, S).transpose(1, 0)  # H x B x T x S
            if not need_head_weights:
                weights = weights.mean(dim=0)
        return out, weights

    def _dropout_active(self) -> bool:
        drop = self.dropout_module
        return drop.p > 0 and (self.training or drop.apply_during_inference)

    def _fused_attention(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                         key_padding_mask: Optional[Tensor]) -> Tensor:
        """The same attention (no head delta, or the concat prefix) through torch's fused kernel, as
        fairseq's own fast path does: used when no weights are returned and no attention dropout
        applies. q: T x B x C (scaled), k, v: B x H x S x D -> B x H x T x D."""
        T, B, _ = q.shape
        S = k.size(2)
        q = q.view(T, B, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        mask = None  # additive, broadcast to B x H x T x S
        if attn_mask is not None:
            mask = attn_mask.to(q.dtype).view(1, 1, T, S)
        if key_padding_mask is not None and key_padding_mask.dim() > 0:
            pad = torch.zeros(B, 1, 1, S, dtype=q.dtype, device=q.device).masked_fill(
                key_padding_mask.view(B, 1, 1, S).to(torch.bool), float("-inf"))
            mask = pad if mask is None else mask + pad
        if self.head_form == "concat":  # prefix keys/values in front, never masked
            P_k, P_v = self.prefix_kv()  # H x l x D
            k = torch.cat([P_k.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([P_v.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
            if mask is not None:
                mask = F.pad(mask, (P_k.size(1), 0))
        if mask is not None:
            mask = mask.expand(B, 1, T, mask.size(-1))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)

    def _head_delta(self, q: Tensor, logits: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """q: kvB x x x H x T x D, logits: ... x T x S, v: kvB x H x S x D -> attn (like q) and the
        probabilities over the S context positions (for need_weights)."""
        P_k, P_v = self.prefix_kv()  # H x l x D each
        P_k, P_v = P_k.to(q.dtype), P_v.to(q.dtype)
        l = P_k.size(1)

        def context(weights: Tensor) -> Tensor:
            return torch.einsum("bxhts,bhsd->bxhtd", weights, v)

        def over_prefix(weights_p: Tensor) -> Tensor:
            return torch.einsum("bxhtl,hld->bxhtd", weights_p, P_v)

        logits_p = torch.einsum("bxhtd,hld->bxhtl", q, P_k)

        if self.head_form == "concat":
            probs = F.softmax(torch.cat([logits_p, logits], dim=-1), dim=-1, dtype=torch.float32).type_as(q)
            dropped = self.dropout_module(probs)
            return context(dropped[..., l:]) + over_prefix(dropped[..., :l]), probs[..., l:]

        probs = F.softmax(logits, dim=-1, dtype=torch.float32).type_as(q)
        attn = context(self.dropout_module(probs))
        if self.head_form == "relu":
            return attn + over_prefix(F.relu(logits_p)), probs

        probs_p = F.softmax(logits_p, dim=-1, dtype=torch.float32).type_as(q)
        delta = over_prefix(self.dropout_module(probs_p))
        if self.head_form == "add":
            return attn + delta, probs
        # gate_add: λ(x) = Σ exp(prefix logits) / (Σ exp(prefix logits) + Σ exp(context logits))
        lam = torch.sigmoid(torch.logsumexp(logits_p.float(), -1) - torch.logsumexp(logits.float(), -1))
        lam = lam.unsqueeze(-1).type_as(q)
        return (1 - lam) * attn + lam * delta, probs
