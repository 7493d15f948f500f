"""What every delta model shares: preparing it after fairseq built it, base checkpoints that
lack delta tensors, the classification heads, and the preset -> architecture registration."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import List

from fairseq.models import register_model_architecture

from unifairseq.core import bases
from unifairseq.core.accounting import ModelShape, format_report, freeze_base, parameter_report
from unifairseq.core.config import DeltaConfigError
from unifairseq.core.modules import is_delta_name, reset_all_deltas
from unifairseq.core.plan import DeltaPlan
from unifairseq.core.presets import PRESETS
from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError, find_base
from unifairseq.fairseq.ckpt_args import ARCH_PARENT
from unifairseq.fairseq.deltafolder import adopt_delta_args, task_dictionaries
from unifairseq.fairseq.model_bank import attach_bank, fill_bank, is_bank_args
from unifairseq.fairseq.resume import repair_last_checkpoint

logger = logging.getLogger("unifairseq.fairseq.models")


_BUILDING: List[DeltaPlan] = []


def plan_for(args, family: str) -> DeltaPlan:
    """The plan of a model about to be built: validated once, refused when it trains nothing. With a
    shared delta folder (`delta_file`), its JSON gives the plan (fairseq/deltafolder.py)."""
    adopt_delta_args(args)
    plan = DeltaPlan.from_args(args)
    if is_bank_args(args):
        if not plan.empty:
            raise DeltaConfigError(
                f"--arch {getattr(args, 'arch', 'delta_' + family)} with --bank-deltas is a model of several deltas, "
                f"each with its own method ({plan.describe()} given as flags): name them in --bank-deltas "
                "(NAME=PRESET[:key=value...] or NAME=FILE) and drop the method flags")
        return plan
    if plan.empty:
        raise DeltaConfigError(
            f"--arch {getattr(args, 'arch', 'delta_' + family)}: nothing to train. delta_* architectures take the "
            f"method from the flags: give --attn-mode and/or --ffn-mode, pick a preset such as mam_{family}_large, "
            f"or use fairseq's plain {family}_large for full fine-tuning")
    return plan


@contextlib.contextmanager
def building(plan: DeltaPlan):
    """fairseq's build_model calls our build_encoder/build_decoder hooks with the args only: they
    read the plan of the model being built from here instead of building it again."""
    _BUILDING.append(plan)
    try:
        yield plan
    finally:
        _BUILDING.pop()


def current_plan(args) -> DeltaPlan:
    return _BUILDING[-1] if _BUILDING else DeltaPlan.from_args(args)


def start_checkpoint(args):
    """The file fairseq-train starts from, resolved as fairseq's checkpoint_utils.load_checkpoint does:
    the default `checkpoint_last.pt` means SAVE_DIR/checkpoint_last.pt, and --finetune-from-model when that
    is not there yet; any other --restore-file is taken as given. Whether it is a base (a full checkpoint)
    or a delta to resume is decided by its content when it loads (DeltaCheckpointMixin.load_state_dict)."""
    restore = getattr(args, "restore_file", None) or "checkpoint_last.pt"
    if restore == "checkpoint_last.pt":
        last = os.path.join(getattr(args, "save_dir", None) or "checkpoints", "checkpoint_last.pt")
        finetune = getattr(args, "finetune_from_model", None)
        path = finetune if (finetune and not os.path.exists(last)) else last
    else:
        path = restore
    return os.path.abspath(path) if path and os.path.isfile(path) else None


def prepare_delta_model(model, args, plan: DeltaPlan, shape: ModelShape, task=None, encoder_decoder=True,
                        before_base=None):
    """After fairseq built the model: re-initialise deltas (fairseq's init_bert_params ran over
    them), freeze the base, log the parameter accounting, and set up delta checkpoints."""
    reset_all_deltas(model)
    freeze_base(model, plan)
    model.delta, model.delta_plan = plan.cfg, plan
    model.delta_report = parameter_report(model, plan, shape)
    logger.info(format_report(getattr(args, "arch", "delta model"), plan, model.delta_report))
    model.save_delta_only = not (getattr(args, "delta_save_full", False) or getattr(args, "bank_save_full", False))
    model.delta_allow_base_mismatch = bool(getattr(args, "delta_allow_base_mismatch", False))
    model.delta_base = getattr(args, "delta_base", None)
    model.delta_file = getattr(args, "delta_file", None)
    model.dictionary_fingerprints = task_dictionaries(task, encoder_decoder)
    repair_last_checkpoint(args)  # a torn checkpoint_last.pt: resume from the newest readable one (resume.py)
    model.base_path_hint = start_checkpoint(args)  # a full checkpoint loaded from here is the base
    if before_base is not None:
        before_base(model)  # RoBERTa: a shared delta's heads must exist before any tensors load
    if model.delta_base:
        try:  # a name or a path (core/bases.py's search order)
            found = find_base(model.delta_base)
        except bases.BaseNotFound as e:
            raise DeltaCheckpointError(f"--delta-base: {e}") from None
        model.load_base(found.path)
        if model.delta_file:
            model.apply_delta_file(model.delta_file)
    if is_bank_args(args):  # N deltas: the model's sites are served by its bank
        attach_bank(model)
        fill_bank(model, args)
        logger.info(f"unifairseq bank: {len(model.bank.names)} deltas ({', '.join(model.bank.names) or 'none yet'}), "
                    f"{sum(p.numel() for p in model.bank.sets.parameters()):,} delta parameters")
    return model


@contextlib.contextmanager
def delta_ids_scope(model, delta_ids, src_tokens):
    """The length of a forward given `delta_ids` (LongTensor [B], bank indices; fairseq passes
    sample["net_input"] on): the model's sites read them from its bank. A model without a bank (one delta,
    no others added) refuses them."""
    bank = model.__dict__.get("bank")
    if bank is None:
        if delta_ids is not None:
            raise ValueError("delta_ids given to a model that holds one delta; give it more deltas first "
                             "(--add-deltas, hub.add_delta, unifairseq.fairseq.own_delta.serve_with_others)")
        yield None
        return
    ids = bank.batch_ids(delta_ids, src_tokens.size(0), src_tokens.device)
    with bank.using(ids):
        yield ids


def fill_missing_delta_keys(model, state_dict, name: str) -> None:
    """A base checkpoint (e.g. the official bart.large) holds no delta tensors: start them from
    their initialisation instead of failing fairseq's strict load."""
    prefix = name + "." if name else ""
    own = model.full_state_dict()
    missing = [k for k in own if is_delta_name(k) and prefix + k not in state_dict]
    from_base = model.base_init_values(state_dict, prefix)  # DoRA's m, a bank's BitFit: from *this* base
    for k in missing:
        state_dict[prefix + k] = from_base.get(prefix + k, own[k])
    if missing:
        logger.info(f"unifairseq: {len(missing)} delta tensors not in the checkpoint start from their "
                    "initialisation (expected when loading a base model)")


def apply_preset(args, preset: dict) -> None:
    """Preset values are defaults: any flag the user gave wins."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def register_presets(model_name: str, family: str, size: str, parent_fn, parent_name: str,
                     overrides=None) -> None:
    """`<method>_<family>_<size>` for every preset, plus `delta_<family>_<size>` (flags only).
    `overrides` changes a preset's values for this family (e.g. GLUE's MAM sizes)."""

    def make(method):
        def arch(args):
            if method is not None:
                apply_preset(args, {**PRESETS[method], **(overrides or {}).get(method, {})})
            parent_fn(args)

        arch.__name__ = f"{method or 'delta'}_{family}_{size}"
        register_model_architecture(model_name, arch.__name__)(arch)
        ARCH_PARENT[arch.__name__] = parent_name

    for method in [None, *PRESETS]:
        make(method)
