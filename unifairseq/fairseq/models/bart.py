"""BART with deltas: `--arch mam_bart_large` and one preset per method of the paper.

    fairseq-train DATA --user-dir user_dir --task translation --arch mam_bart_large \\
        --restore-file bart.large/model.pt --reset-optimizer ...

The model is fairseq's BARTModel; only its encoder/decoder builders are overridden,
so an official `bart.large/model.pt` loads into it (the delta tensors it lacks start
from their initialisation, see `upgrade_state_dict_named`).
"""
from __future__ import annotations

from fairseq.models import register_model
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture, mbart_large_architecture

from unifairseq.core.accounting import ModelShape, base_bias_params
from unifairseq.core.config import add_delta_args
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches
from unifairseq.fairseq.checkpoint import DeltaCheckpointMixin
from unifairseq.fairseq.hub import FromPretrainedMixin
from unifairseq.fairseq.layers import DeltaTransformerDecoder, DeltaTransformerEncoder
from unifairseq.fairseq.models.common import (building, current_plan, fill_missing_delta_keys, plan_for,
                                              prepare_delta_model, register_presets)


class DeltaIdsMixin:
    """The model's forward takes `delta_ids` (LongTensor [B], bank indices; fairseq passes
    sample["net_input"] on) when a bank serves the model (a bank architecture, or a single-delta model
    with more deltas, model_bank.serve_with_others): the sites read them for the length of the forward."""

    def forward(self, src_tokens, src_lengths, prev_output_tokens, *args, delta_ids=None, **kwargs):
        bank = self.__dict__.get("bank")
        if bank is None:
            if delta_ids is not None:
                raise ValueError("delta_ids given to a model that holds one delta; give it more deltas first "
                                 "(--add-deltas, unifairseq.fairseq.model_bank.serve_with_others)")
            return super().forward(src_tokens, src_lengths, prev_output_tokens, *args, **kwargs)
        ids = bank.batch_ids(delta_ids, src_tokens.size(0), src_tokens.device)
        with bank.using(ids):  # the encoder reads them here (BART's forward does not pass them on)
            return super().forward(src_tokens, src_lengths, prev_output_tokens, *args, **kwargs)


@register_model("delta_bart")
class DeltaBARTModel(FromPretrainedMixin, DeltaCheckpointMixin, DeltaIdsMixin, BARTModel):
    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        add_delta_args(parser)
        keep_every_batch(parser)

    @classmethod
    def build_model(cls, args, task):
        no_dropped_batches(task)
        with building(plan_for(args, "bart")) as plan:
            model = super().build_model(args, task)
        shape = ModelShape.encoder_decoder(args.encoder_embed_dim, args.encoder_ffn_embed_dim,
                                           args.encoder_layers, args.decoder_layers, base_bias_params(model))
        return prepare_delta_model(model, args, plan, shape, task, encoder_decoder=True)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return DeltaTransformerEncoder(args, src_dict, embed_tokens, current_plan(args))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return DeltaTransformerDecoder(args, tgt_dict, embed_tokens, current_plan(args),
                                       no_encoder_attn=getattr(args, "no_cross_attention", False))

    def upgrade_state_dict_named(self, state_dict, name):
        super().upgrade_state_dict_named(state_dict, name)
        fill_missing_delta_keys(self, state_dict, name)


# ------------------------------------------------------------- architectures
register_presets("delta_bart", "bart", "large", bart_large_architecture, "bart_large")
register_presets("delta_bart", "bart", "base", bart_base_architecture, "bart_base")


def mbart_cc25_architecture(args):
    """mbart.cc25 as fine-tuned in fairseq's mBART example: pre-LN layers with an embedding layer
    norm (`--encoder-normalize-before --decoder-normalize-before --layernorm-embedding`), which
    fairseq's `mbart_large` preset alone leaves off."""
    for flag in ("encoder_normalize_before", "decoder_normalize_before", "layernorm_embedding"):
        if getattr(args, flag, None) is None:
            setattr(args, flag, True)
    mbart_large_architecture(args)


register_presets("delta_bart", "mbart", "large", mbart_cc25_architecture, "mbart_large")
