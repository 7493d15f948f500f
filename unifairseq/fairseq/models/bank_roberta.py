"""RoBERTa bank for sentence classification: `--arch bank_roberta_base` / `bank_roberta_large`.

Each delta of the bank carries its own classification heads (`classification_heads.NAME.*` inside
its DeltaSet, the keys of its single-delta checkpoint). `model(src_tokens, classification_head_name=
NAME, delta_ids=ids)` gives every sentence the logits of its own delta and head; heads with fewer
classes than the widest in the batch are padded with -inf (softmax and cross-entropy ignore them).
The sentence representation is the first non-padding position: <s>, or a delta's first prompt vector
(as a single-delta model reads features[:, 0] with its prompt in front).
"""
from __future__ import annotations

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import (RobertaClassificationHead, roberta_base_architecture,
                                          roberta_large_architecture)
from fairseq.modules.transformer_sentence_encoder import init_bert_params

from unifairseq.core.bank import BankError
from unifairseq.fairseq.layers import DeltaTransformerEncoder
from unifairseq.fairseq.model_bank import attach_bank, empty_plan
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches
from unifairseq.fairseq.resume import repair_last_checkpoint
from unifairseq.fairseq.models.bank import BankModelMixin, add_bank_args, fill_bank
from unifairseq.fairseq.models.roberta import roberta_defaults


class BankRobertaEncoder(RobertaEncoder):
    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = DeltaTransformerEncoder(args, dictionary, embed_tokens, empty_plan())
        encoder.apply(init_bert_params)  # as fairseq's RobertaEncoder
        return encoder

    def max_positions(self):
        return self.sentence_encoder.max_positions()


@register_model("bank_roberta")
class BankRobertaModel(BankModelMixin, RobertaModel):
    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        add_bank_args(parser)
        keep_every_batch(parser)

    @classmethod
    def build_model(cls, args, task):
        no_dropped_batches(task)
        repair_last_checkpoint(args)  # a torn checkpoint_last.pt (unifairseq/fairseq/resume.py)
        roberta_defaults(args, task)
        model = cls(args, BankRobertaEncoder(args, task.source_dictionary))
        attach_bank(model)
        fill_bank(model, args)
        return model

    def make_classification_head(self, num_classes: int, inner_dim: int = None) -> RobertaClassificationHead:
        a = self.args
        return RobertaClassificationHead(
            input_dim=a.encoder_embed_dim, inner_dim=inner_dim or a.encoder_embed_dim, num_classes=num_classes,
            activation_fn=a.pooler_activation_fn, pooler_dropout=a.pooler_dropout, q_noise=a.quant_noise_pq,
            qn_block_size=a.quant_noise_pq_block_size, do_spectral_norm=a.spectral_norm_classification_head)

    def register_classification_head(self, name, num_classes=None, inner_dim=None, deltas=None, **kwargs):
        """The head on every delta of the bank that lacks it (or on `deltas`): each task its own head."""
        for dname in deltas or self.bank.names:
            if ("head", name) not in self.bank.sets[dname].sites:
                self.bank.add_head(dname, name, self.make_classification_head(num_classes, inner_dim))

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False, classification_head_name=None,
                delta_ids=None, **kwargs):
        ids = self.bank.batch_ids(delta_ids, src_tokens.size(0), src_tokens.device)
        with self.bank.using(ids):
            if classification_head_name is None:
                return super().forward(src_tokens, features_only, return_all_hiddens, **kwargs)
            enc = self.encoder.sentence_encoder(src_tokens, return_all_hiddens=return_all_hiddens,
                                                token_embeddings=kwargs.get("token_embeddings"))
        features = enc["encoder_out"][0].transpose(0, 1)  # B x T x C
        first = (~enc["encoder_padding_mask"][0]).long().argmax(1)  # <s>, or the first prompt vector
        rep = features[torch.arange(features.size(0), device=features.device), first].unsqueeze(1)
        extra = {"inner_states": enc["encoder_states"] if return_all_hiddens else None}
        return self.bank.classify(classification_head_name, rep, ids), extra


@register_model_architecture("bank_roberta", "bank_roberta_base")
def bank_roberta_base(args):
    roberta_base_architecture(args)


@register_model_architecture("bank_roberta", "bank_roberta_large")
def bank_roberta_large(args):
    roberta_large_architecture(args)


__all__ = ["BankRobertaModel", "BankError"]
