"""fairseq Transformer layers and stacks with deltas, built through fairseq's hooks.

Nothing here copies a fairseq `forward`: the layers override `build_self_attention`,
`build_encoder_attention`, `build_fc1` and `build_fc2`; the stacks override
`build_encoder_layer` / `build_decoder_layer`. The only `forward` overrides are the
encoder's, for prompt tuning, which prepends l learned vectors to the token
embeddings and then calls fairseq's own forward, and, in a bank model, the decoder's
extract_features, which hands the batch's delta ids to the sites and calls fairseq's own.

Which method sits where is the plan's (core/plan.py); this module only puts the method's
module at its site. Where each FFN delta reads and writes (fairseq's FFN is fc2(act(fc1(x)))
with x the FFN input):
  parallel adapter    reads x (what fc1 reads), adds s * f(x) to fc2's output
  sequential adapter  h + f(h) on fc2's output (Pfeiffer; Houlsby adds one after self-attention)
  LoRA, DoRA          on W_1 and W_2 themselves; (IA)³ on fc2's input (the hidden activation)
In a post-LN model (BART, RoBERTa) x is the residual stream after the previous layer
norm. In a pre-LN model (mBART) the FFN reads final_layer_norm(x); the parallel adapter
reads the residual stream x itself (a pre-hook on final_layer_norm), as the paper's code
did. Sequential adapters and LoRA work on the FFN's own input/output in both.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from fairseq.distributed import fsdp_wrap
from fairseq.models.transformer import TransformerConfig, TransformerDecoder, TransformerEncoder
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from unifairseq.core.methods.prefix import PrefixProvider
from unifairseq.core.modules import DeltaLinear
from unifairseq.core.plan import DeltaPlan
from unifairseq.fairseq.attention import DeltaMultiheadAttention
from unifairseq.fairseq.sites import FFNSite


# ------------------------------------------------------------------ helpers
def make_prefix(plan: DeltaPlan, kind: str, num_layers: int, dim: int, heads: int) -> Optional[PrefixProvider]:
    """The P_k/P_v source for one attention kind, or None if the plan leaves its heads alone."""
    return plan.build(plan.at("heads", kind), num_layers=num_layers, dim=dim, heads=heads)


def _check_quant_noise(q_noise: float) -> None:
    if q_noise and q_noise > 0:
        raise ValueError("--quant-noise-pq is not supported together with unifairseq deltas; set it to 0")


class _DeltaLayerMixin:
    """The FFN hooks, shared by encoder and decoder layers."""

    plan: DeltaPlan

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        _check_quant_noise(q_noise)
        own = self.plan.build(self.plan.at("ffn"), dim=input_dim)
        if own is not None:  # fc1 is built before fc2: the site is created here and shared by both
            self.delta_ffn = own
        self.ffn_site = FFNSite(own)
        return self._ffn_linear(input_dim, output_dim, "in")

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        _check_quant_noise(q_noise)
        return self._ffn_linear(input_dim, output_dim, "out")

    def _ffn_linear(self, input_dim, output_dim, role):
        spec = self.plan.at("fc1" if role == "in" else "fc2")  # LoRA / DoRA on W_1, W_2; (IA)³ on fc2's input
        delta = self.plan.build(spec, in_features=input_dim, out_features=output_dim)
        site = self.ffn_site
        if role == "in" and self.normalize_before:
            site = None  # the pre-LN residual is read by a hook on final_layer_norm instead (see below)
        return DeltaLinear(input_dim, output_dim, delta=delta, site=site, role=role)

    def _hook_residual_read(self) -> None:
        """Pre-LN (mBART): a parallel FFN adapter reads the residual stream x, not final_layer_norm(x),
        as the paper's code did; final_layer_norm's input in a pre-LN layer is exactly that stream. (A
        sequential adapter reads nothing.) The bank keeps this hook when it swaps the layer norm."""
        if self.normalize_before:
            self.final_layer_norm.register_forward_pre_hook(self._read_residual)

    def _read_residual(self, module, inputs):
        self.ffn_site.read(inputs[0])

    def _attention(self, embed_dim, num_heads, prefix, kind, **kwargs):
        _check_quant_noise(self.quant_noise)
        return DeltaMultiheadAttention(embed_dim, num_heads, plan=self.plan, kind=kind, layer_idx=self.layer_idx,
                                       prefix=prefix, **kwargs)


def _set_before_init(module: nn.Module, **attrs) -> None:
    """fairseq's layer __init__ calls our build_* hooks, which read these: set them first.
    (fairseq itself sets `self.cfg` before nn.Module.__init__ in TransformerEncoderBase.)"""
    for k, v in attrs.items():
        object.__setattr__(module, k, v)


# ------------------------------------------------------------------- layers
class DeltaEncoderLayer(_DeltaLayerMixin, TransformerEncoderLayerBase):
    def __init__(self, cfg, plan: DeltaPlan, layer_idx: int, prefix: Optional[PrefixProvider],
                 return_fc: bool = False):
        _set_before_init(self, plan=plan, layer_idx=layer_idx, _prefix=prefix)
        super().__init__(cfg, return_fc=return_fc)
        self._hook_residual_read()

    def build_self_attention(self, embed_dim, cfg):
        return self._attention(embed_dim, cfg.encoder.attention_heads, self._prefix, "self",
                               dropout=cfg.attention_dropout, self_attention=True)


class DeltaDecoderLayer(_DeltaLayerMixin, TransformerDecoderLayerBase):
    def __init__(self, cfg, plan: DeltaPlan, layer_idx: int, prefix_self: Optional[PrefixProvider],
                 prefix_cross: Optional[PrefixProvider], no_encoder_attn: bool = False):
        _set_before_init(self, plan=plan, layer_idx=layer_idx, _prefix_self=prefix_self,
                         _prefix_cross=prefix_cross)
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)
        self._hook_residual_read()

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if cfg.cross_self_attention:
            raise ValueError("--cross-self-attention is not supported with unifairseq deltas")
        return self._attention(embed_dim, cfg.decoder.attention_heads, self._prefix_self, "self",
                               dropout=cfg.attention_dropout, add_bias_kv=add_bias_kv,
                               add_zero_attn=add_zero_attn, self_attention=True)

    def build_encoder_attention(self, embed_dim, cfg):
        return self._attention(embed_dim, cfg.decoder.attention_heads, self._prefix_cross, "cross",
                               kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim,
                               dropout=cfg.attention_dropout, encoder_decoder_attention=True)


def _input_requires_grad(module, args):
    """fairseq's activation checkpointing is re-entrant: when nothing entering a checkpointed layer
    requires grad -- the case with a frozen base, where the embeddings are frozen -- its output does
    not either, and the deltas inside get no gradient. Marking the layer input fixes that."""
    x = args[0] if args else None
    if torch.is_grad_enabled() and torch.is_tensor(x) and x.is_floating_point() and not x.requires_grad:
        x.requires_grad_(True)


def _carry_bank_ids(layer: nn.Module) -> None:
    """A bank hands a batch's delta ids to its sites for the length of a forward (bank.using). A
    checkpointed layer runs again inside the backward, after that forward has returned: the ids become
    an argument of the layer's call (a pre-hook adds them), which fairseq's checkpointing saves with the
    other inputs and hands to the re-run, which serves the same ids again."""
    forward = layer.forward

    def run(*args, _delta_ids=None, **kwargs):
        bank = layer.ffn_site.bank
        if bank is None or _delta_ids is None:
            return forward(*args, **kwargs)
        with bank.using(_delta_ids):
            return forward(*args, **kwargs)

    def hand_over(module, args, kwargs):
        bank = layer.ffn_site.bank
        if bank is not None and bank.current() is not None:
            return args, dict(kwargs, _delta_ids=bank.current())
        return None

    layer.forward = run
    layer.register_forward_pre_hook(hand_over, with_kwargs=True)


def _wrap_layer(layer: nn.Module, cfg) -> nn.Module:
    """Activation checkpointing / FSDP wrapping, as fairseq's own build_*_layer does."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        _carry_bank_ids(layer)
        layer.register_forward_pre_hook(_input_requires_grad)  # runs before the checkpointed forward
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


# ------------------------------------------------------------------- stacks
def _share_prefix_mlp_per_pass(stack: nn.Module, providers, cfg) -> None:
    """Training: the prefix MLP runs once per encoder/decoder forward for all its layers (see
    PrefixProvider.forward). Not with activation checkpointing, whose re-entrant backward re-runs
    and back-propagates one layer at a time and so needs a per-layer graph."""
    providers = [p for p in providers if p is not None and p.mid_dim > 0]
    if not providers or getattr(cfg, "checkpoint_activations", False):
        return

    def begin(module, args):
        for p in providers:
            p.begin_pass()

    def end(module, args, output):
        for p in providers:
            p.end_pass()

    stack.register_forward_pre_hook(begin)
    stack.register_forward_hook(end, always_call=True)


def _output_projection_2d(decoder, features: torch.Tensor) -> torch.Tensor:
    """fairseq's B x T x C decoder features are a transpose of T x B x C. torch's matmul folds such
    a 3-D input into one mm only when the weight requires grad; for a frozen weight (the embedding
    that BART's output projection shares) it runs a bmm over B broadcast copies of the 50k x d
    matrix: ~9x slower per decoding step (B = beam x batch, T = 1), ~1.6x in training. On a 2-D
    view it is one mm (at most a copy of the B x T x C features)."""
    B, T, C = features.shape
    return decoder.output_projection(features.reshape(B * T, C)).view(B, T, -1)


@contextlib.contextmanager
def _bank_prefix_pass(bank, keys):
    """Training a bank: each prefix MLP of the bank runs once per encoder/decoder forward for all its
    layers (PrefixProvider.begin_pass, as _share_prefix_mlp_per_pass arranges for a model's own delta)."""
    provs = [p for key in keys for _, (p, _) in bank.entries(key) if p.mid_dim > 0] if torch.is_grad_enabled() else []
    for p in provs:
        p.begin_pass()
    try:
        yield
    finally:
        for p in provs:
            p.end_pass()


def _prompt_too_long(n_tokens: int, l: int, positions: int, max_input: int) -> ValueError:
    return ValueError(
        f"prompt tuning: an input of {n_tokens} tokens plus the {l} prompt vectors needs {n_tokens + l} "
        f"positions, but the model has {positions}. Inputs must be at most {max_input} tokens: pass "
        f"--max-positions/--tokens-per-sample {max_input} with --shorten-method truncate (sentence_prediction) "
        f"or --truncate-source (translation), or a shorter prompt (--attn-bn)")


class DeltaTransformerEncoder(TransformerEncoder):
    """fairseq's encoder with deltas. In a bank model (`_bank` set by model_bank.attach_bank) it takes
    delta_ids (LongTensor [B]; fairseq passes sample["net_input"] on), prepends each sample's own prompt,
    and carries the ids in encoder_out["delta_ids"], which reorder_encoder_out reorders with the beams."""

    def __init__(self, args, dictionary, embed_tokens, plan: DeltaPlan, return_fc=False):
        _set_before_init(self, plan=plan, delta=plan.cfg, _n_layers_built=0)
        super().__init__(args, dictionary, embed_tokens, return_fc=return_fc)
        self.delta_prompt = plan.build(plan.at("embed"), dim=embed_tokens.embedding_dim)
        self.path: Optional[str] = None  # set with the bank
        _share_prefix_mlp_per_pass(self, [getattr(self, "delta_prefix", None)], args)

    def build_encoder_layer(self, args):
        cfg = TransformerConfig.from_namespace(args)
        if self._n_layers_built == 0:
            self.delta_prefix = make_prefix(self.plan, "self", cfg.encoder.layers, cfg.encoder.embed_dim,
                                            cfg.encoder.attention_heads)
        layer = DeltaEncoderLayer(cfg, self.plan, self._n_layers_built, self.delta_prefix,
                                  return_fc=self.return_fc)
        self._n_layers_built += 1
        return _wrap_layer(layer, cfg)

    def forward(self, src_tokens, src_lengths: Optional[torch.Tensor] = None,
                return_all_hiddens: bool = False, token_embeddings: Optional[torch.Tensor] = None,
                delta_ids: Optional[torch.Tensor] = None):
        bank = self.__dict__.get("_bank")
        if bank is not None:
            return self._bank_forward(bank, src_tokens, src_lengths, return_all_hiddens, token_embeddings, delta_ids)
        if self.delta_prompt is not None:
            # B x T -> B x (l+T): the prompt vectors go in front of the token embeddings; the
            # placeholder ids (bos, never padding) only feed fairseq's padding mask and positions.
            B, l = src_tokens.size(0), self.delta_prompt.weight.size(0)
            if self.embed_positions is not None and src_tokens.size(1) + l > super().max_positions():
                raise _prompt_too_long(src_tokens.size(1), l, super().max_positions(), self.max_positions())
            if token_embeddings is None:
                token_embeddings = self.embed_tokens(src_tokens)
            token_embeddings = self.delta_prompt.prepend(token_embeddings)
            src_tokens = torch.cat([src_tokens.new_full((B, l), self.dictionary.bos()), src_tokens], dim=1)
            if src_lengths is not None:
                src_lengths = src_lengths + l
        return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)

    def _bank_forward(self, bank, src_tokens, src_lengths, return_all_hiddens, token_embeddings, delta_ids):
        ids = bank.batch_ids(delta_ids, src_tokens.size(0), src_tokens.device)
        with bank.using(ids), _bank_prefix_pass(bank, [("prefix", self.path, "self")]):
            prompts = bank.prompt_rows(("prompt", self.path), ids)
            if prompts is not None:
                # per-sample prompts, left-aligned and padded to the longest: [prompt_i, pad, source].
                # Padding is masked and skipped by fairseq's positions, so each row equals its own
                # single-delta layout [prompt_i, source] (a row without a prompt equals the base)
                rows, lengths = prompts
                l_max = rows.size(1)
                if self.embed_positions is not None and src_tokens.size(1) + l_max > super().max_positions():
                    raise _prompt_too_long(src_tokens.size(1), l_max, super().max_positions(), self.max_positions())
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

    def reorder_encoder_out(self, encoder_out: Dict[str, List[torch.Tensor]], new_order):
        out = super().reorder_encoder_out(encoder_out, new_order)
        if "delta_ids" in encoder_out:
            out["delta_ids"] = [encoder_out["delta_ids"][0].index_select(0, new_order)]
        return out

    def max_positions(self):
        bank = self.__dict__.get("_bank")
        if bank is not None:  # the bank's longest prompt (a model's own prompt is one of the bank's)
            return super().max_positions() - max(self.plan.prompt_len, bank.max_prompt_len(("prompt", self.path)))
        return super().max_positions() - self.plan.prompt_len


class DeltaTransformerDecoder(TransformerDecoder):
    """fairseq's decoder with deltas. In a bank model it reads the ids from encoder_out["delta_ids"]
    (reordered with the beams) in a full forward and in incremental decoding alike."""

    def __init__(self, args, dictionary, embed_tokens, plan: DeltaPlan, no_encoder_attn=False,
                 output_projection=None):
        _set_before_init(self, plan=plan, delta=plan.cfg, _n_layers_built=0)
        super().__init__(args, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn,
                         output_projection=output_projection)
        self.path: Optional[str] = None  # set with the bank
        _share_prefix_mlp_per_pass(
            self, [getattr(self, "delta_prefix_self", None), getattr(self, "delta_prefix_cross", None)], args)

    def output_layer(self, features):
        if self.adaptive_softmax is None:
            return _output_projection_2d(self, features)
        return super().output_layer(features)

    def build_decoder_layer(self, args, no_encoder_attn=False):
        cfg = TransformerConfig.from_namespace(args)
        if self._n_layers_built == 0:
            self.delta_prefix_self = make_prefix(self.plan, "self", cfg.decoder.layers, cfg.decoder.embed_dim,
                                                 cfg.decoder.attention_heads)
            self.delta_prefix_cross = None if no_encoder_attn else \
                make_prefix(self.plan, "cross", cfg.decoder.layers, cfg.decoder.embed_dim,
                            cfg.decoder.attention_heads)
        layer = DeltaDecoderLayer(cfg, self.plan, self._n_layers_built, self.delta_prefix_self,
                                  self.delta_prefix_cross, no_encoder_attn=no_encoder_attn)
        self._n_layers_built += 1
        return _wrap_layer(layer, cfg)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        bank = self.__dict__.get("_bank")
        if bank is None:
            return super().extract_features(prev_output_tokens, encoder_out, incremental_state, **kwargs)
        ids = self._delta_ids(prev_output_tokens.size(0), encoder_out, incremental_state)
        with bank.using(bank.batch_ids(ids, prev_output_tokens.size(0), prev_output_tokens.device)), \
                _bank_prefix_pass(bank, [("prefix", self.path, "self"), ("prefix", self.path, "cross")]):
            return super().extract_features(prev_output_tokens, encoder_out, incremental_state, **kwargs)

    def _delta_ids(self, B: int, encoder_out, incremental_state) -> Optional[torch.Tensor]:
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

    def reorder_incremental_state_scripting(self, incremental_state, new_order: torch.Tensor):
        super().reorder_incremental_state_scripting(incremental_state, new_order)
        saved = self.get_incremental_state(incremental_state, "bank")
        if saved is not None and saved.get("delta_ids") is not None:
            self.set_incremental_state(incremental_state, "bank",
                                       {"delta_ids": saved["delta_ids"].index_select(0, new_order)})
