"""Multi-head attention with the attention-side deltas (fairseq glue around core/heads.py).

fairseq's `MultiheadAttention.forward` has a fast path that hands `q_proj.weight`
etc. straight to `F.multi_head_attention_forward`, which would silently bypass any
delta on a projection (LoRA, DoRA, (IA)³) and has no place for prefixes. This subclass keeps
fairseq's module (names, incremental-state buffers, reordering, the beamable cross-attention
layout) and replaces only `forward` with one attention computation that every method goes
through, in training, in a full forward and in incremental decoding alike.

What sits where comes from the plan: projection deltas at q/k/v/out_proj (`DeltaLinear`), a
head-level delta (the prefix family, MH PA; the math in core/heads.py) and an adapter on the
attention output (parallel reads the input x, sequential the output). In a bank model the same class
computes a mixed batch: each site asks the bank (core/bank.py) for the samples' own deltas.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from fairseq.modules.multihead_attention import MultiheadAttention

from unifairseq.core import heads
from unifairseq.core.methods.prefix import PrefixProvider
from unifairseq.core.modules import DeltaLinear
from unifairseq.core.plan import DeltaPlan

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


class DeltaMultiheadAttention(MultiheadAttention):
    def __init__(self, embed_dim: int, num_heads: int, *, plan: DeltaPlan, kind: str, layer_idx: int,
                 prefix: Optional[PrefixProvider] = None, **mha_kwargs):
        super().__init__(embed_dim, num_heads, **mha_kwargs)
        if self.use_xformers or self.bias_k is not None or self.add_zero_attn:
            raise ValueError("unifairseq deltas do not support xformers, add_bias_kv or add_zero_attn attention")
        for name in PROJECTIONS:  # LoRA / DoRA / (IA)³ on the projections the plan names
            spec, proj = plan.at(name, kind), getattr(self, name)
            # every projection is a DeltaLinear (same weight tensors and names): a bank serves any of them
            setattr(self, name, DeltaLinear.wrap(proj, plan.build(spec, in_features=proj.in_features,
                                                                  out_features=proj.out_features)))
        heads_spec = plan.at("heads", kind)
        self.head_form = heads_spec.opts["form"] if heads_spec is not None else None
        assert (self.head_form is None) == (prefix is None)
        # shared by all layers of this attention kind and registered on the encoder/decoder:
        # keep a plain reference so its parameters are not registered (and saved) L times
        object.__setattr__(self, "prefix_source", prefix)
        self.layer_idx = layer_idx
        self.kind = kind
        self.delta_out = plan.build(plan.at("attn_out", kind), dim=embed_dim)
        self.path: Optional[str] = None  # set with the bank (model_bank.attach_bank): its site keys
        self.prefix_key = None  # ("prefix", stack path, kind)

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
        fused_ok = self._fused_ok(incremental_state)
        if x == 1 and not need_weights and fused_ok and not self._dropout_active():
            q4 = q.view(T, B, H, D).permute(1, 2, 0, 3)  # B x H x T x D
            prefix = self.prefix_kv() if self.head_form == "concat" else None
            attn = heads.fused_attention(q4, k, v, attn_mask, key_padding_mask, prefix)  # B x H x T x D
            return self._attn_out(self.out_proj(attn.permute(2, 0, 1, 3).reshape(T, B, C)), query), None

        # T x B x C -> kvB x x x H x T x D
        q = q.contiguous().view(T, kv_B, x, H, D).permute(1, 2, 3, 0, 4)
        logits = torch.einsum("bxhtd,bhsd->bxhts", q, k)
        if attn_mask is not None:  # T x S, additive (causal mask)
            logits = logits + attn_mask
        if key_padding_mask is not None and key_padding_mask.dim() > 0:  # fairseq uses a 0-dim tensor for none
            logits = logits.masked_fill(key_padding_mask.view(kv_B, 1, 1, 1, S).to(torch.bool), float("-inf"))

        attn, probs = self._head_attention(q, logits, v)

        attn = attn.permute(3, 0, 1, 2, 4).reshape(T, B, C)  # T x B x C
        out = self._attn_out(self.out_proj(attn), query)

        weights: Optional[Tensor] = None
        if need_weights:
            weights = probs.reshape(B, H, T, S).transpose(1, 0)  # H x B x T x S
            if not need_head_weights:
                weights = weights.mean(dim=0)
        return out, weights

    def _served_by(self):
        """The bank serving this attention's sites (a plain reference set by attach_bank), or None."""
        return self.__dict__.get("_bank")

    def _attn_out(self, out: Tensor, query: Tensor) -> Tensor:
        """The adapter on the attention output (parallel ones read the attention input x). With a bank,
        the bank computes it for every row (a model's own delta is one of the bank's)."""
        bank = self._served_by()
        if bank is not None and bank.has(("attn_out", self.path)):
            return bank.adapters(("attn_out", self.path), out, query)
        if self.delta_out is not None:
            out = self.delta_out(out, query)
        return out

    def _bank_prefix(self) -> bool:
        bank = self._served_by()
        return bank is not None and bank.has(self.prefix_key)

    def _fused_ok(self, incremental_state) -> bool:
        if self._bank_prefix():
            return False  # per-sample prefixes of several lengths: the explicit path, padded per sample
        return self.head_form is None or (self.head_form == "concat" and incremental_state is None)

    def _head_attention(self, q: Tensor, logits: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        if self._bank_prefix():
            return self._served_by().head_attention(self.prefix_key, self.layer_idx, self.num_heads, q, logits, v,
                                               self.dropout_module)
        if self.head_form is None:
            return heads.attention(q, logits, v, self.dropout_module)
        return heads.head_delta(self.head_form, q, logits, v, *self.prefix_kv(), self.dropout_module)

    def _dropout_active(self) -> bool:
        drop = self.dropout_module
        return drop.p > 0 and (self.training or drop.apply_during_inference)
