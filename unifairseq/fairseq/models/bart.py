"""BART with deltas: `--arch mam_bart_large` and one preset per method of the paper.

    fairseq-train DATA --user-dir user_dir --task translation --arch mam_bart_large \\
        --restore-file bart.large/model.pt --reset-optimizer ...

The model is fairseq's BARTModel; only its encoder/decoder builders are overridden,
so an official `bart.large/model.pt` loads into it (the delta tensors it lacks start
from their initialisation, see `upgrade_state_dict_named`).
"""
from __future__ import annotations

from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture, mbart_large_architecture

from unifairseq.core.bank import BankError
from unifairseq.core.accounting import ModelShape, base_bias_params
from unifairseq.core.config import add_delta_args
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches
from unifairseq.fairseq.checkpoint import DeltaCheckpointMixin
from unifairseq.fairseq.hub import FromPretrainedMixin
from unifairseq.fairseq.layers import DeltaTransformerDecoder, DeltaTransformerEncoder
from unifairseq.fairseq.model_bank import add_bank_args
from unifairseq.fairseq.models.common import (building, current_plan, delta_ids_scope, fill_missing_delta_keys,
                                              plan_for, prepare_delta_model, register_presets)


class DeltaIdsMixin:
    """The model's forward takes `delta_ids` when a bank serves the model (models/common.delta_ids_scope)."""

    def forward(self, src_tokens, src_lengths, prev_output_tokens, *args, delta_ids=None, **kwargs):
        with delta_ids_scope(self, delta_ids, src_tokens):  # the encoder reads them (BART passes them no further)
            return super().forward(src_tokens, src_lengths, prev_output_tokens, *args, **kwargs)


@register_model("delta_bart")
class DeltaBARTModel(FromPretrainedMixin, DeltaCheckpointMixin, DeltaIdsMixin, BARTModel):
    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        add_delta_args(parser)
        add_bank_args(parser)
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

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        if self.delta_plan.empty:
            raise BankError("a BART bank has no classification heads; use bank_roberta_base for sentence classification")
        super().register_classification_head(name, num_classes, inner_dim, **kwargs)

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


# the bank architectures: models of N deltas named by --bank-deltas (docs/bank.md); today's command lines and
# checkpoints name them
register_model_architecture("delta_bart", "bank_bart_base")(bart_base_architecture)
register_model_architecture("delta_bart", "bank_bart_large")(bart_large_architecture)
register_model_architecture("delta_bart", "bank_mbart_large")(mbart_cc25_architecture)
