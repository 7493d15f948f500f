"""RoBERTa with deltas for fairseq's `sentence_prediction` task (MNLI, SST-2).

    fairseq-train DATA-bin --user-dir user_dir --task sentence_prediction --arch mam_roberta_base \\
        --restore-file roberta.base/model.pt --reset-optimizer --num-classes 2 ...

Deltas sit in the single self-attention and FFN of each layer. The classification head is
trained with the deltas and travels in the delta checkpoint (the reference code left it
frozen at its random initialisation).
"""
from __future__ import annotations

import logging

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import (RobertaClassificationHead, base_architecture, roberta_base_architecture,
                                          roberta_large_architecture)
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_hasattr

from unifairseq.core.accounting import ModelShape, base_bias_params, format_report, parameter_report
from unifairseq.core.config import add_delta_args
from unifairseq.core.plan import DeltaPlan
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches
from unifairseq.fairseq.checkpoint import DeltaCheckpointMixin
from unifairseq.fairseq.hub import FromPretrainedMixin
from unifairseq.fairseq.deltafolder import adopt_delta_args, register_heads
from unifairseq.fairseq.layers import DeltaTransformerEncoder
from unifairseq.fairseq.model_bank import add_bank_args
from unifairseq.fairseq.models.common import (delta_ids_scope, fill_missing_delta_keys, plan_for, prepare_delta_model,
                                              register_presets)

logger = logging.getLogger("unifairseq.fairseq.models")

# GLUE MAM in the paper's scripts: l=16, r=16, s=2
GLUE_MAM = dict(attn_bn=16, ffn_bn=16, ffn_adapter_scalar=2.0)


class DeltaRobertaEncoder(RobertaEncoder):
    def __init__(self, args, dictionary, plan: DeltaPlan):
        object.__setattr__(self, "plan", plan)  # read by build_encoder, called from __init__
        super().__init__(args, dictionary)

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = DeltaTransformerEncoder(args, dictionary, embed_tokens, self.plan)
        encoder.apply(init_bert_params)  # as fairseq's RobertaEncoder; deltas are re-initialised later
        return encoder

    def max_positions(self):
        """fairseq's RobertaEncoder answers --max-positions; with prompt tuning the l prompt vectors
        take l of those positions, so inputs must be l tokens shorter (the trainer filters longer
        ones, sentence_prediction's --shorten-method truncate cuts to this); in a bank, the longest prompt's."""
        return self.sentence_encoder.max_positions()



def roberta_defaults(args, task) -> None:
    """What fairseq's RobertaModel.build_model sets before building: the base architecture's defaults and
    the positions from the task (both the delta and the bank models build their encoders themselves)."""
    base_architecture(args)
    if not safe_hasattr(args, "max_positions"):
        if not safe_hasattr(args, "tokens_per_sample"):
            args.tokens_per_sample = task.max_positions()
        args.max_positions = args.tokens_per_sample


@register_model("delta_roberta")
class DeltaRobertaModel(FromPretrainedMixin, DeltaCheckpointMixin, RobertaModel):
    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        add_delta_args(parser)
        add_bank_args(parser)
        keep_every_batch(parser)

    @classmethod
    def build_model(cls, args, task):
        no_dropped_batches(task)
        roberta_defaults(args, task)
        plan = plan_for(args, "roberta")
        model = cls(args, DeltaRobertaEncoder(args, task.source_dictionary, plan))
        model.delta_shape = ModelShape.encoder_only(args.encoder_embed_dim, args.encoder_ffn_embed_dim,
                                                    args.encoder_layers, base_bias_params(model))
        return prepare_delta_model(model, args, plan, model.delta_shape, task, encoder_decoder=False,
                                   before_base=lambda m: register_heads(m, adopt_delta_args(args)))

    def make_classification_head(self, num_classes: int, inner_dim: int = None) -> RobertaClassificationHead:
        """fairseq's head for this model's args (a bank builds one per delta)."""
        a = self.args
        return RobertaClassificationHead(
            input_dim=a.encoder_embed_dim, inner_dim=inner_dim or a.encoder_embed_dim, num_classes=num_classes,
            activation_fn=a.pooler_activation_fn, pooler_dropout=a.pooler_dropout, q_noise=a.quant_noise_pq,
            qn_block_size=a.quant_noise_pq_block_size, do_spectral_norm=a.spectral_norm_classification_head)

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False, classification_head_name=None,
                delta_ids=None, **kwargs):
        """With a bank (N deltas), `delta_ids` give each sentence its delta and that delta's own head; heads with
        fewer classes than the widest in the batch are padded with -inf (softmax and cross-entropy ignore them).
        The sentence representation is the first non-padding position: <s>, or a delta's first prompt vector
        (as a single-delta model reads features[:, 0] with its prompt in front)."""
        with delta_ids_scope(self, delta_ids, src_tokens) as ids:
            if ids is None or classification_head_name is None:
                return super().forward(src_tokens, features_only, return_all_hiddens, classification_head_name,
                                       **kwargs)
            enc = self.encoder.sentence_encoder(src_tokens, return_all_hiddens=return_all_hiddens,
                                                token_embeddings=kwargs.get("token_embeddings"))
        features = enc["encoder_out"][0].transpose(0, 1)  # B x T x C
        first = (~enc["encoder_padding_mask"][0]).long().argmax(1)  # <s>, or the first prompt vector
        rep = features[torch.arange(features.size(0), device=features.device), first].unsqueeze(1)  # B x 1 x C
        extra = {"inner_states": enc["encoder_states"] if return_all_hiddens else None}
        return self.bank.classify(classification_head_name, rep, ids), extra

    def register_classification_head(self, name, num_classes=None, inner_dim=None, deltas=None, **kwargs):
        """One delta: fairseq's head, trained and saved with the delta. A bank: the head on every delta that
        lacks it (or on `deltas`), each task its own head."""
        if self.delta_plan.empty:
            for dname in deltas or self.bank.names:
                if ("head", name) not in self.bank.sets[dname].sites:
                    self.bank.add_head(dname, name, self.make_classification_head(num_classes, inner_dim))
            return
        super().register_classification_head(name, num_classes, inner_dim, **kwargs)
        # the head is new and task-specific: it is trained (requires_grad stays True) and saved
        self.delta_report = parameter_report(self, self.delta_plan, self.delta_shape)
        logger.info(format_report(getattr(self.args, "arch", "delta_roberta"), self.delta_plan, self.delta_report)
                    + f" -- including the '{name}' classification head")

    def upgrade_state_dict_named(self, state_dict, name):
        super().upgrade_state_dict_named(state_dict, name)
        fill_missing_delta_keys(self, state_dict, name)


register_presets("delta_roberta", "roberta", "base", roberta_base_architecture, "roberta_base", {"mam": GLUE_MAM})
register_presets("delta_roberta", "roberta", "large", roberta_large_architecture, "roberta_large", {"mam": GLUE_MAM})


# the bank architectures: models of N deltas named by --bank-deltas (docs/bank.md); today's command lines and
# checkpoints name them
register_model_architecture("delta_roberta", "bank_roberta_base")(roberta_base_architecture)
register_model_architecture("delta_roberta", "bank_roberta_large")(roberta_large_architecture)
