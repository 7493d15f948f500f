"""BART with deltas: `--arch mam_bart_large` and one preset per method of the paper.

    fairseq-train DATA --user-dir user_dir --task translation --arch mam_bart_large \\
        --restore-file bart.large/model.pt --reset-optimizer ...

The model is fairseq's BARTModel; only its encoder/decoder builders are overridden,
so an official `bart.large/model.pt` loads into it (the delta tensors it lacks start
from their initialisation, see `upgrade_state_dict_named`).
"""
from __future__ import annotations

import logging
import os

from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture

from ..checkpoint import DeltaCheckpointMixin
from ..accounting import ModelShape, base_bias_params, format_report, freeze_base, parameter_report
from ..config import PRESETS, DeltaConfig, add_delta_args
from ..deltas import is_delta_name, reset_all_deltas
from ..layers import DeltaTransformerDecoder, DeltaTransformerEncoder

logger = logging.getLogger(__name__)


def prepare_delta_model(model, args, delta: DeltaConfig, shape: ModelShape):
    """After fairseq built the model: re-initialise deltas (fairseq's init_bert_params ran over
    them), freeze the base, log the parameter accounting, and set up delta checkpoints."""
    reset_all_deltas(model)
    freeze_base(model, delta)
    model.delta = delta
    model.delta_report = parameter_report(model, delta, shape)
    logger.info(format_report(getattr(args, "arch", "delta model"), delta, model.delta_report))
    model.save_delta_only = not getattr(args, "delta_save_full", False)
    model.delta_allow_base_mismatch = bool(getattr(args, "delta_allow_base_mismatch", False))
    model.delta_base = getattr(args, "delta_base", None)
    start = getattr(args, "finetune_from_model", None) or getattr(args, "restore_file", None)
    if start and os.path.basename(start) != "checkpoint_last.pt":
        model.base_path_hint = os.path.abspath(start)  # a full checkpoint loaded from here is the base
    if model.delta_base:
        model.load_base(model.delta_base)
    return model


def fill_missing_delta_keys(model, state_dict, name: str) -> None:
    """A base checkpoint (e.g. the official bart.large) holds no delta tensors: start them from
    their initialisation instead of failing fairseq's strict load."""
    prefix = name + "." if name else ""
    own = model.full_state_dict()
    missing = [k for k in own if is_delta_name(k) and prefix + k not in state_dict]
    for k in missing:
        state_dict[prefix + k] = own[k]
    if missing:
        logger.info(f"unifairseq: {len(missing)} delta tensors not in the checkpoint start from their "
                    "initialisation (expected when loading a base model)")


@register_model("delta_bart")
class DeltaBARTModel(DeltaCheckpointMixin, BARTModel):
    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        add_delta_args(parser)

    @classmethod
    def build_model(cls, args, task):
        delta = DeltaConfig.from_args(args)
        model = super().build_model(args, task)
        shape = ModelShape.encoder_decoder(args.encoder_embed_dim, args.encoder_ffn_embed_dim,
                                           args.encoder_layers, args.decoder_layers, base_bias_params(model))
        return prepare_delta_model(model, args, delta, shape)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return DeltaTransformerEncoder(args, src_dict, embed_tokens, DeltaConfig.from_args(args))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return DeltaTransformerDecoder(args, tgt_dict, embed_tokens, DeltaConfig.from_args(args),
                                       no_encoder_attn=getattr(args, "no_cross_attention", False))

    def upgrade_state_dict_named(self, state_dict, name):
        super().upgrade_state_dict_named(state_dict, name)
        fill_missing_delta_keys(self, state_dict, name)


# ------------------------------------------------------------- architectures
def apply_preset(args, preset: dict) -> None:
    """Preset values are defaults: any flag the user gave wins."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


ARCH_PARENT = {"delta_bart_large": "bart_large", "delta_bart_base": "bart_base"}  # for merged exports


def _register(method: str, size: str, parent) -> None:
    def arch(args):
        apply_preset(args, PRESETS[method])
        parent(args)

    arch.__name__ = f"{method}_bart_{size}"
    register_model_architecture("delta_bart", arch.__name__)(arch)
    ARCH_PARENT[arch.__name__] = f"bart_{size}"


@register_model_architecture("delta_bart", "delta_bart_large")
def delta_bart_large(args):
    """No preset: every delta comes from the flags (--attn-mode, --ffn-mode, ...)."""
    bart_large_architecture(args)


@register_model_architecture("delta_bart", "delta_bart_base")
def delta_bart_base(args):
    bart_base_architecture(args)


for _method in PRESETS:
    _register(_method, "large", bart_large_architecture)
    _register(_method, "base", bart_base_architecture)
