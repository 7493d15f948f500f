"""RoBERTa with deltas for fairseq's `sentence_prediction` task (MNLI, SST-2).

    fairseq-train DATA-bin --user-dir user_dir --task sentence_prediction --arch mam_roberta_base \\
        --restore-file roberta.base/model.pt --reset-optimizer --num-classes 2 ...

Deltas sit in the single self-attention and FFN of each layer. The classification head is
trained with the deltas and travels in the delta checkpoint (the reference code left it
frozen at its random initialisation).
"""
from __future__ import annotations

import logging

from fairseq.models import register_model
from fairseq.models.roberta import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import base_architecture, roberta_base_architecture, roberta_large_architecture
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
from unifairseq.fairseq.models.common import fill_missing_delta_keys, plan_for, prepare_delta_model, register_presets

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
        ones, sentence_prediction's --shorten-method truncate cuts to this)."""
        return self.args.max_positions - self.plan.prompt_len



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

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
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
