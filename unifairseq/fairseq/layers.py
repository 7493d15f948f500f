"""fairseq Transformer layers and stacks with deltas, built through fairseq's hooks.

Nothing here copies a fairseq `forward`: the layers override `build_self_attention`,
`build_encoder_attention`, `build_fc1` and `build_fc2`; the stacks override
`build_encoder_layer` / `build_decoder_layer`. The only `forward` override is the
encoder's, for prompt tuning, which prepends l learned vectors to the token
embeddings and then calls fairseq's own forward.

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

from typing import Optional

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
        site = self.plan.build(self.plan.at("ffn"), dim=input_dim)
        if site is not None:  # fc1 is built before fc2: the site is created here and shared by both
            self.delta_ffn = site
        return self._ffn_linear(input_dim, output_dim, "in")

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        _check_quant_noise(q_noise)
        return self._ffn_linear(input_dim, output_dim, "out")

    def _ffn_linear(self, input_dim, output_dim, role):
        spec = self.plan.at("fc1" if role == "in" else "fc2")  # LoRA / DoRA on W_1, W_2; (IA)³ on fc2's input
        delta = self.plan.build(spec, in_features=input_dim, out_features=output_dim)
        site = getattr(self, "delta_ffn", None)
        if role == "in" and self._reads_residual():
            site = None  # the pre-LN residual is read by a hook on final_layer_norm instead (see below)
        return DeltaLinear(input_dim, output_dim, delta=delta, site=site, role=role)

    def _reads_residual(self) -> bool:
        """Pre-LN (mBART): the parallel FFN adapter reads the residual stream x, not
        final_layer_norm(x), as the paper's code did."""
        site = getattr(self, "delta_ffn", None)
        return self.normalize_before and site is not None and site.parallel

    def _hook_residual_read(self) -> None:
        if self._reads_residual():
            # final_layer_norm's input in a pre-LN layer is exactly the FFN sub-layer's residual stream
            self.final_layer_norm.register_forward_pre_hook(self._read_residual)

    def _read_residual(self, module, inputs):
        self.delta_ffn.read(inputs[0])

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


def _wrap_layer(layer: nn.Module, cfg) -> nn.Module:
    """Activation checkpointing / FSDP wrapping, as fairseq's own build_*_layer does."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
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


class DeltaTransformerEncoder(TransformerEncoder):
    def __init__(self, args, dictionary, embed_tokens, plan: DeltaPlan, return_fc=False):
        _set_before_init(self, plan=plan, delta=plan.cfg, _n_layers_built=0)
        super().__init__(args, dictionary, embed_tokens, return_fc=return_fc)
        self.delta_prompt = plan.build(plan.at("embed"), dim=embed_tokens.embedding_dim)
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
                return_all_hiddens: bool = False, token_embeddings: Optional[torch.Tensor] = None):
        if self.delta_prompt is not None:
            # B x T -> B x (l+T): the prompt vectors go in front of the token embeddings; the
            # placeholder ids (bos, never padding) only feed fairseq's padding mask and positions.
            B, l = src_tokens.size(0), self.delta_prompt.weight.size(0)
            if self.embed_positions is not None and src_tokens.size(1) + l > super().max_positions():
                raise ValueError(
                    f"prompt tuning: an input of {src_tokens.size(1)} tokens plus the {l} prompt vectors needs "
                    f"{src_tokens.size(1) + l} positions, but the model has {super().max_positions()}. Inputs must "
                    f"be at most {self.max_positions()} tokens: pass --max-positions/--tokens-per-sample "
                    f"{self.max_positions()} with --shorten-method truncate (sentence_prediction) or "
                    f"--truncate-source (translation), or a shorter prompt (--attn-bn)")
            if token_embeddings is None:
                token_embeddings = self.embed_tokens(src_tokens)
            token_embeddings = self.delta_prompt.prepend(token_embeddings)
            src_tokens = torch.cat([src_tokens.new_full((B, l), self.dictionary.bos()), src_tokens], dim=1)
            if src_lengths is not None:
                src_lengths = src_lengths + l
        return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)

    def max_positions(self):
        return super().max_positions() - self.plan.prompt_len


class DeltaTransformerDecoder(TransformerDecoder):
    def __init__(self, args, dictionary, embed_tokens, plan: DeltaPlan, no_encoder_attn=False,
                 output_projection=None):
        _set_before_init(self, plan=plan, delta=plan.cfg, _n_layers_built=0)
        super().__init__(args, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn,
                         output_projection=output_projection)
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
