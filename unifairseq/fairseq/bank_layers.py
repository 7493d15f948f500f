"""fairseq layers and stacks of a delta bank (see core/bank.py for the per-sample mechanism).

The same fairseq hooks as layers.py (build_self_attention, build_encoder_attention, build_fc1,
build_fc2, build_encoder_layer, build_decoder_layer); every site holds no delta itself but asks the
bank (a plain reference, `_bank`) for the deltas of the samples in its batch, by its own path:

  BankLinear        q/k/v/out_proj, fc1, fc2: LoRA / DoRA / (IA)³ per sample, BitFit bias rows,
                    and the FFN adapter site (fc1 reads the FFN input, fc2 writes Δh)
  BankLayerNorm     BitFit's per-sample layer-norm biases
  BankAttention     per-sample prefixes (all head forms), attention-output adapters
  stacks            the encoder takes delta_ids (and per-sample prompts) and carries the ids in
                    encoder_out["delta_ids"], which reorder_encoder_out reorders with the beams; the
                    decoder reads them from encoder_out, in a full forward and incremental decoding alike
Rows are T x B x C inside layers (batch dim 1); layernorm_embedding sees B x T x C (dim 0).
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq.models.transformer import TransformerConfig, TransformerDecoder, TransformerEncoder
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from unifairseq.core import heads
from unifairseq.fairseq.attention import DeltaMultiheadAttention
from unifairseq.fairseq.layers import _check_quant_noise, _output_projection_2d, _set_before_init


def _bank_of(module):
    return module.__dict__["_bank"]


class _NoPlan:
    """What DeltaMultiheadAttention's constructor asks of a plan: nothing sits here by plan."""

    def at(self, *a, **k):
        return None

    def build(self, spec, **dims):
        return None


class BankLinear(nn.Linear):
    """A projection (base weight under its own name) with per-sample projection deltas and biases."""

    def __init__(self, in_features, out_features, bias=True, site=None, role=None):
        super().__init__(in_features, out_features, bias=bias)
        object.__setattr__(self, "_site", site)
        self.role = role
        self.path = None  # set by attach_bank

    @classmethod
    def wrap(cls, linear: nn.Linear) -> "BankLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight = linear.weight
        if linear.bias is not None:
            new.bias = linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        site = self._site
        if site is not None and self.role == "in":
            site.read(x)
        bank = self.__dict__.get("_bank")
        key = ("proj", self.path)
        if bank is None or not (bank.has(key) or bank.has(("bias", self.path + ".bias"))):
            y = F.linear(x, self.weight, self.bias)
        else:
            ids = bank.ids_for(x.size(1))
            b = bank.bias_rows(self.path + ".bias", ids, self.bias)  # BitFit rows, or None

            def rows(t, sel, d):
                return t if sel is None else t.index_select(d, sel)

            def base(sel):
                xs = rows(x, sel, 1)
                return F.linear(xs, self.weight, self.bias) if b is None else \
                    F.linear(xs, self.weight) + rows(b, sel, 0)

            if b is None:
                y = bank.route(key, ids, 1, lambda sel: (rows(x, sel, 1), self.weight, self.bias),
                               (1, None, None), base)
            else:
                y = bank.route(key, ids, 1, lambda sel: (rows(x, sel, 1), self.weight, rows(b, sel, 0)),
                               (1, None, "r"), base)
        if site is not None and self.role == "out":
            y = site.write(y)
        return y


class BankLayerNorm(nn.LayerNorm):
    """fairseq's LayerNorm (same parameter names) with BitFit's per-sample biases."""

    batch_dim = 1
    path = None

    def forward(self, x: Tensor) -> Tensor:
        bank = self.__dict__.get("_bank")
        if bank is None or not bank.has(("bias", self.path + ".bias")):
            return super().forward(x)
        ids = bank.ids_for(x.size(self.batch_dim))
        b = bank.bias_rows(self.path + ".bias", ids, self.bias)
        y = F.layer_norm(x, self.normalized_shape, self.weight, None, self.eps)
        return y + (b.unsqueeze(0) if self.batch_dim == 1 else b.unsqueeze(1))


class BankFFNSite:
    """The FFN adapters of one layer: fc1 hands over the FFN input, fc2 its output."""

    def __init__(self):
        self.path = None
        self.bank = None
        self._x: Optional[Tensor] = None

    def read(self, x: Tensor) -> None:
        self._x = x

    def write(self, h: Tensor) -> Tensor:
        x, self._x = self._x, None
        key = ("ffn", self.path)
        if self.bank is None or not self.bank.has(key):
            return h
        ids = self.bank.ids_for(h.size(1))
        return self.bank.apply(key, h, ids, 1, lambda sel: (h.index_select(1, sel), x.index_select(1, sel)),
                               (1, 1))


class BankAttentionOut:
    """Adapters on an attention output (parallel ones read the attention input)."""

    def __init__(self, attn):
        self.attn = attn

    def __call__(self, out: Tensor, query: Tensor) -> Tensor:
        bank, key = self.attn.__dict__.get("_bank"), ("attn_out", self.attn.path)
        if bank is None or not bank.has(key):
            return out
        ids = bank.ids_for(out.size(1))
        return bank.apply(key, out, ids, 1, lambda sel: (out.index_select(1, sel), query.index_select(1, sel)),
                          (1, 1))


class BankAttention(DeltaMultiheadAttention):
    def __init__(self, embed_dim, num_heads, *, kind: str, layer_idx: int, **mha_kwargs):
        super().__init__(embed_dim, num_heads, plan=_NoPlan(), kind=kind, layer_idx=layer_idx, **mha_kwargs)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, BankLinear.wrap(getattr(self, name)))
        self.kind = kind
        self.path = None
        self.prefix_key = None  # ("prefix", stack path, kind), set by attach_bank
        self.delta_out = BankAttentionOut(self)

    def _has_prefix(self) -> bool:
        bank = self.__dict__.get("_bank")
        return bank is not None and bank.has(self.prefix_key)

    def _fused_ok(self, incremental_state) -> bool:
        return not self._has_prefix()

    def _head_attention(self, q: Tensor, logits: Tensor, v: Tensor):
        if not self._has_prefix():
            return heads.attention(q, logits, v, self.dropout_module)
        bank = _bank_of(self)
        ids = bank.ids_for(q.size(0))  # one id per K/V row (= per sentence in beamable cross-attention)
        groups = bank.prefix_rows(self.prefix_key, self.layer_idx, ids, self.num_heads)
        attn = probs = None
        done = torch.zeros(q.size(0), dtype=torch.bool, device=q.device)
        parts = []
        for form, rows, P_k, P_v, pad in groups:
            parts.append((rows, heads.head_delta(form, q.index_select(0, rows), logits.index_select(0, rows),
                                                 v.index_select(0, rows), P_k, P_v, self.dropout_module, pad)))
            done[rows] = True
        rest = (~done).nonzero().squeeze(1)
        if rest.numel():
            parts.append((rest, heads.attention(q.index_select(0, rest), logits.index_select(0, rest),
                                                v.index_select(0, rest), self.dropout_module)))
        attn = q.new_zeros(q.shape)
        probs = q.new_zeros(logits.shape)
        for rows, (a, p) in parts:
            attn = attn.index_copy(0, rows, a)
            probs = probs.index_copy(0, rows, p.to(probs.dtype))
        return attn, probs


# ------------------------------------------------------------------- layers
class _BankLayerMixin:
    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        _check_quant_noise(q_noise)
        self.bank_ffn = BankFFNSite()
        return BankLinear(input_dim, output_dim, site=None if self.normalize_before else self.bank_ffn, role="in")

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        _check_quant_noise(q_noise)
        return BankLinear(input_dim, output_dim, site=self.bank_ffn, role="out")

    def hook_residual_read(self) -> None:
        """Called by attach_bank once final_layer_norm is the bank's own module."""
        if self.normalize_before:  # pre-LN: the parallel FFN adapter reads the residual stream (layers.py)
            self.final_layer_norm.register_forward_pre_hook(lambda m, inputs: self.bank_ffn.read(inputs[0]))

    def _attention(self, embed_dim, num_heads, kind, **kwargs):
        _check_quant_noise(self.quant_noise)
        return BankAttention(embed_dim, num_heads, kind=kind, layer_idx=self.layer_idx, **kwargs)


class BankEncoderLayer(_BankLayerMixin, TransformerEncoderLayerBase):
    def __init__(self, cfg, layer_idx: int):
        _set_before_init(self, layer_idx=layer_idx)
        super().__init__(cfg)

    def build_self_attention(self, embed_dim, cfg):
        return self._attention(embed_dim, cfg.encoder.attention_heads, "self", dropout=cfg.attention_dropout,
                               self_attention=True)


class BankDecoderLayer(_BankLayerMixin, TransformerDecoderLayerBase):
    def __init__(self, cfg, layer_idx: int, no_encoder_attn=False):
        _set_before_init(self, layer_idx=layer_idx)
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if cfg.cross_self_attention:
            raise ValueError("--cross-self-attention is not supported with unifairseq deltas")
        return self._attention(embed_dim, cfg.decoder.attention_heads, "self", dropout=cfg.attention_dropout,
                               add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, self_attention=True)

    def build_encoder_attention(self, embed_dim, cfg):
        return self._attention(embed_dim, cfg.decoder.attention_heads, "cross", kdim=cfg.encoder.embed_dim,
                               vdim=cfg.encoder.embed_dim, dropout=cfg.attention_dropout,
                               encoder_decoder_attention=True)


# ------------------------------------------------------------------- stacks
@contextlib.contextmanager
def prefix_pass(bank, keys):
    """Training: each prefix MLP of the bank runs once per encoder/decoder forward for all its layers
    (PrefixProvider.begin_pass, as layers.py arranges for a single delta)."""
    provs = [p for key in keys for _, (p, _) in bank.entries(key) if p.mid_dim > 0] if torch.is_grad_enabled() else []
    for p in provs:
        p.begin_pass()
    try:
        yield
    finally:
        for p in provs:
            p.end_pass()


class BankTransformerEncoder(TransformerEncoder):
    """Takes delta_ids; prepends per-sample prompts; carries the ids in encoder_out."""

    def __init__(self, args, dictionary, embed_tokens, return_fc=False):
        if getattr(args, "checkpoint_activations", False):
            raise ValueError("--checkpoint-activations is not supported by bank models yet; drop it")
        _set_before_init(self, _n_layers_built=0)
        super().__init__(args, dictionary, embed_tokens, return_fc=return_fc)
        self.path = None

    def build_encoder_layer(self, args):
        layer = BankEncoderLayer(TransformerConfig.from_namespace(args), self._n_layers_built)
        self._n_layers_built += 1
        return layer

    def forward(self, src_tokens, src_lengths: Optional[Tensor] = None, return_all_hiddens: bool = False,
                token_embeddings: Optional[Tensor] = None, delta_ids: Optional[Tensor] = None):
        bank = _bank_of(self)
        ids = bank.batch_ids(delta_ids, src_tokens.size(0), src_tokens.device)
        with bank.using(ids), prefix_pass(bank, [("prefix", self.path, "self")]):
            prompts = bank.prompt_rows(("prompt", self.path), ids)
            if prompts is not None:
                # per-sample prompts, left-aligned and padded to the longest: [prompt_i, pad, source].
                # Padding is masked and skipped by fairseq's positions, so each row equals its own
                # single-delta layout [prompt_i, source] (a row without a prompt equals the base)
                rows, lengths = prompts
                l_max = rows.size(1)
                if self.embed_positions is not None and src_tokens.size(1) + l_max > super().max_positions():
                    raise ValueError(f"prompt tuning: an input of {src_tokens.size(1)} tokens plus {l_max} prompt "
                                     f"vectors exceeds the model's {super().max_positions()} positions; shorten "
                                     "the input (--truncate-source) or the prompt")
                if token_embeddings is None:
                    token_embeddings = self.embed_tokens(src_tokens)
                token_embeddings = torch.cat([rows.to(token_embeddings.dtype), token_embeddings], dim=1)
                slots = torch.arange(l_max, device=src_tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
                holders = torch.where(slots, self.dictionary.bos(), self.dictionary.pad())
                src_tokens = torch.cat([holders, src_tokens], dim=1)
                if src_lengths is not None:
                    src_lengths = src_lengths + lengths
            out = super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        out["delta_ids"] = [ids]
        return out

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order):
        out = super().reorder_encoder_out(encoder_out, new_order)
        if "delta_ids" in encoder_out:
            out["delta_ids"] = [encoder_out["delta_ids"][0].index_select(0, new_order)]
        return out

    def max_positions(self):
        return super().max_positions() - _bank_of(self).max_prompt_len(("prompt", self.path))


class BankTransformerDecoder(TransformerDecoder):
    """Reads the ids from encoder_out["delta_ids"] (reordered with the beams)."""

    def __init__(self, args, dictionary, embed_tokens, no_encoder_attn=False, output_projection=None):
        _set_before_init(self, _n_layers_built=0)
        super().__init__(args, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn,
                         output_projection=output_projection)

    def build_decoder_layer(self, args, no_encoder_attn=False):
        layer = BankDecoderLayer(TransformerConfig.from_namespace(args), self._n_layers_built,
                                 no_encoder_attn=no_encoder_attn)
        self._n_layers_built += 1
        return layer

    def output_layer(self, features):
        if self.adaptive_softmax is None:
            return _output_projection_2d(self, features)
        return super().output_layer(features)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        bank = _bank_of(self)
        ids = self._delta_ids(prev_output_tokens.size(0), encoder_out, incremental_state)
        with bank.using(bank.batch_ids(ids, prev_output_tokens.size(0), prev_output_tokens.device)), \
                prefix_pass(bank, [("prefix", self.path, "self"), ("prefix", self.path, "cross")]):
            return super().extract_features(prev_output_tokens, encoder_out, incremental_state, **kwargs)

    def _delta_ids(self, B: int, encoder_out, incremental_state) -> Optional[Tensor]:
        """The ids of the decoder's B rows. BART's beamable cross-attention leaves encoder_out at one
        row per sentence and never reorders it (set_beam_size), so the decoder keeps its own copy in
        the incremental state, which beam search reorders with every step (reorder_incremental_state)."""
        if incremental_state is not None:
            saved = self.get_incremental_state(incremental_state, "bank")
            if saved is not None and saved.get("delta_ids") is not None and saved["delta_ids"].numel() == B:
                return saved["delta_ids"]
        ids = encoder_out["delta_ids"][0] if encoder_out and encoder_out.get("delta_ids") else None
        if ids is not None and ids.numel() != B and ids.numel() and B % ids.numel() == 0:
            ids = ids.repeat_interleave(B // ids.numel())  # beam rows of a sentence are consecutive
        if ids is not None and incremental_state is not None:
            self.set_incremental_state(incremental_state, "bank", {"delta_ids": ids})
        return ids

    def reorder_incremental_state_scripting(self, incremental_state, new_order: Tensor):
        super().reorder_incremental_state_scripting(incremental_state, new_order)
        saved = self.get_incremental_state(incremental_state, "bank")
        if saved is not None and saved.get("delta_ids") is not None:
            self.set_incremental_state(incremental_state, "bank",
                                       {"delta_ids": saved["delta_ids"].index_select(0, new_order)})
