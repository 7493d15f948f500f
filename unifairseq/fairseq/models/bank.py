"""Bank architectures: one frozen base, N deltas, a delta per sentence (docs/bank.md).

    fairseq-train DATA --user-dir user_dir --arch bank_bart_base \\
        --bank-deltas "sum=mam:attn_bn=16,mt=lora_attn,ro=PATH/ro.pt" --finetune-from-model bart.base/model.pt ...

`--bank-deltas name=PATH_OR_PRESET[:key=value...],...`: a delta file (loaded) or a preset with
overrides (a fresh trainable delta). The model's forward and its encoder take
`delta_ids` (LongTensor [B], bank indices in --bank-deltas order; -1 = the plain base), as
fairseq passes `sample["net_input"]`; the encoder carries them in encoder_out["delta_ids"], which
beam search reorders, and the decoder reads them from there.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture

from unifairseq.core.bank import BankError
from unifairseq.fairseq.layers import DeltaTransformerDecoder, DeltaTransformerEncoder
from unifairseq.fairseq.models.bart import DeltaIdsMixin, mbart_cc25_architecture
from unifairseq.fairseq.model_bank import BANK_ATTR, attach_bank, delta_source, empty_plan, parse_bank_deltas
from unifairseq.fairseq.batching import keep_every_batch, no_dropped_batches
from unifairseq.fairseq.resume import repair_last_checkpoint
from unifairseq.core.bases import BaseNotFound
from unifairseq.fairseq.checkpoint_io import (BASE_PATH_KEY, FINGERPRINT_KEY, find_base, load_checkpoint_file,
                                              str_to_tensor, tensor_to_str)

logger = logging.getLogger("unifairseq.fairseq.models")


def add_bank_args(parser) -> None:
    parser.add_argument("--bank-save-full", action="store_true",
                        help="write the base into checkpoints too (default: the bank's deltas and the base's path)")
    parser.add_argument("--delta-base", type=str, metavar="PATH",
                        help="the base checkpoint under a bank checkpoint (default: the path it records)")
    parser.add_argument("--bank-default", type=str, metavar="NAME",
                        help="the delta of sentences that name none (default: none; a one-delta bank uses it)")
    parser.add_argument("--bank-deltas", type=str, metavar="NAME=PATH_OR_PRESET,...",
                        help="the deltas of the bank, in bank-index order: a delta file, or a preset "
                             "(PRESET[:key=value...], e.g. mam:attn_bn=16) for a fresh trainable delta")


def fill_bank(model, args) -> None:
    start = getattr(args, "finetune_from_model", None) or getattr(args, "restore_file", None)
    named = start and os.path.basename(start) != "checkpoint_last.pt"
    if named:
        model.base_path_hint = os.path.abspath(start)  # a full checkpoint loaded from here is the base
    for name, source in parse_bank_deltas(getattr(args, "bank_deltas", None) or "").items():
        # fairseq loads the start checkpoint (the base, or the bank checkpoint being resumed) after
        # build_model: a delta file's tensors and its base check wait for it (load_state_dict below)
        model.bank.add(name, delta_source(source), after_base=bool(named))
    if getattr(args, "bank_default", None):
        model.bank.index(args.bank_default)  # a name the bank has, or the error naming those it has
        model.bank.default = args.bank_default
    n = len(model.bank.names)
    logger.info(f"unifairseq bank: {n} deltas ({', '.join(model.bank.names) or 'none yet'}), "
                f"{sum(p.numel() for p in getattr(model, BANK_ATTR).parameters()):,} delta parameters on "
                f"{sum(p.numel() for n_, p in model.named_parameters() if not n_.startswith(BANK_ATTR)):,} frozen")


def fill_missing_bank_keys(model, state_dict, name: str) -> None:
    """A base checkpoint holds no bank tensors: they keep their current values, except those that
    start from the base weights (DoRA's magnitude, BitFit's biases), which start from *this* base."""
    prefix = name + "." if name else ""
    own = torch.nn.Module.state_dict(model)
    for k, v in own.items():
        if k.startswith(BANK_ATTR + ".") and prefix + k not in state_dict:
            state_dict[prefix + k] = v
    for dname, ds in getattr(model, BANK_ATTR).items():
        for key, m in ds.sites.items():
            if key[0] == "bias" and prefix + key[1] in state_dict:  # BitFit trains the base's own biases
                state_dict[f"{prefix}{BANK_ATTR}.{dname}.{key[1]}"] = state_dict[prefix + key[1]].clone()
            if key[0] == "proj" and prefix + key[1] + ".weight" in state_dict:
                for pname, value in m.from_base(state_dict[prefix + key[1] + ".weight"]).items():
                    state_dict[f"{prefix}{BANK_ATTR}.{dname}.{key[1]}.{m.module_name}.{pname}"] = value


class BankModelMixin:
    """Checkpoints of a bank model hold the bank only (every delta, at delta_bank.NAME.<single-model key>)
    and the base's path; loading one loads that base first (override: --model-overrides
    "{'delta_base': PATH}" or UNIFAIRSEQ_DELTA_BASE), then the deltas on top. A full checkpoint (the
    pretrained base through --finetune-from-model / --restore-file) loads as it is and becomes the base."""

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        full = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if getattr(self.args, "bank_save_full", False):
            return full
        out = OrderedDict((k, v) for k, v in full.items() if k[len(prefix):].startswith(BANK_ATTR + "."))
        out[prefix + BASE_PATH_KEY] = str_to_tensor(self.bank.base_path or "")
        return out

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        sd = OrderedDict(state_dict)
        stored = sd.pop(BASE_PATH_KEY, None)
        sd.pop(FINGERPRINT_KEY, None)
        if any(not k.startswith(BANK_ATTR + ".") and not k.endswith("version") for k in sd):
            result = super().load_state_dict(sd, strict=strict, model_cfg=model_cfg, args=args)
            self.bank.base_path = getattr(self, "base_path_hint", None) or self.bank.base_path
            self.bank.load_pending()  # delta files of --bank-deltas, on this base
            return result
        if self.bank.base_path is None:  # a bank checkpoint: its base first
            flag = getattr(self.args, "delta_base", None) or os.environ.get("UNIFAIRSEQ_DELTA_BASE")
            recorded = tensor_to_str(stored) if stored is not None else ""
            try:  # the one lookup: a name or a path, else the recorded path
                found = find_base(flag, recorded_path=recorded or None,
                                  option="--model-overrides \"{'delta_base': 'PATH'}\" or UNIFAIRSEQ_DELTA_BASE=PATH")
            except BaseNotFound as e:
                raise BankError(f"this bank checkpoint's base is not there: {e}") from None
            self.load_bank_base(found.path)
        merged = OrderedDict(torch.nn.Module.state_dict(self))
        merged.update(sd)
        result = super().load_state_dict(merged, strict=strict, model_cfg=model_cfg, args=args)
        # resuming: the checkpoint's trained values of a delta win over its file's
        self.bank.load_pending(skip={k.split(".")[1] for k in sd if k.startswith(BANK_ATTR + ".")})
        return result

    def load_bank_base(self, path: str) -> None:
        sd = dict(load_checkpoint_file(path)["model"])
        self.upgrade_state_dict(sd)
        torch.nn.Module.load_state_dict(self, sd, strict=True)
        self.bank.base_path = os.path.abspath(path)
        logger.info(f"unifairseq bank: base loaded from {path}")

    def upgrade_state_dict_named(self, state_dict, name):
        super().upgrade_state_dict_named(state_dict, name)
        fill_missing_bank_keys(self, state_dict, name)

    def bank_state_dict(self):
        """Every delta of the bank (not the base): {name: its single-delta state}."""
        return {n: self.bank.delta_state(n) for n in self.bank.names}


@register_model("bank_bart")
class BankBARTModel(BankModelMixin, DeltaIdsMixin, BARTModel):
    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        add_bank_args(parser)
        keep_every_batch(parser)

    @classmethod
    def build_model(cls, args, task):
        no_dropped_batches(task)
        repair_last_checkpoint(args)  # a torn checkpoint_last.pt (unifairseq/fairseq/resume.py)
        model = super().build_model(args, task)
        attach_bank(model)
        fill_bank(model, args)
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return DeltaTransformerEncoder(args, src_dict, embed_tokens, empty_plan())

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return DeltaTransformerDecoder(args, tgt_dict, embed_tokens, empty_plan(),
                                       no_encoder_attn=getattr(args, "no_cross_attention", False))

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        raise BankError("bank_bart has no classification heads; use bank_roberta_base for sentence classification")


@register_model_architecture("bank_bart", "bank_bart_base")
def bank_bart_base(args):
    bart_base_architecture(args)


@register_model_architecture("bank_bart", "bank_bart_large")
def bank_bart_large(args):
    bart_large_architecture(args)


@register_model_architecture("bank_bart", "bank_mbart_large")
def bank_mbart_large(args):
    mbart_cc25_architecture(args)  # pre-LN: parallel FFN adapters read the residual stream, as layers.py
