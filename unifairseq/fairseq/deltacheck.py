"""The one check of a delta against the model it is loaded into, for `.pt` deltas and delta folders alike:
its architecture family, its base (content fingerprint, in the version it recorded), the task's dictionaries,
the model shape, and its tensors (names the plan trains, shapes, floating-point dtypes).

Nothing a file holds switches a check off: a delta that records no dictionary is refused unless
--delta-allow-base-mismatch is given on the command line (a `.pt` delta from before the dictionary was
recorded keeps loading with its plan fingerprint checked, and a warning). A mismatch of base or
dictionary names both sides and the fix.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from unifairseq.core import bases
from unifairseq.core.deltaschema import SHAPE_ARGS
from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError
from unifairseq.fairseq.ckpt_args import ARCH_PARENT

logger = logging.getLogger("unifairseq.fairseq.models")
FORCE = ("pass --delta-allow-base-mismatch (--model-overrides \"{'delta_allow_base_mismatch': True}\") "
         "to force it")


def refuse(model, msg: str, allow: bool = False) -> None:
    if allow:
        logger.warning("unifairseq: " + msg + " (loading anyway: --delta-allow-base-mismatch)")
        return
    raise DeltaCheckpointError(msg)


def family_of(arch: Optional[str]) -> Optional[str]:
    if not arch:
        return None
    return ARCH_PARENT.get(arch, arch).split("_")[0]


def check_arch(where: str, config: dict) -> None:
    """A folder's arch is a registered delta architecture of its own family and parent."""
    arch = config["arch"]
    if ARCH_PARENT.get(arch) != config["parent_arch"]:
        raise DeltaCheckpointError(f"{where}: field 'arch' {arch!r} is not a unifairseq architecture of "
                                   f"{config['parent_arch']!r} (unifairseq-count lists them)")


def check_base(model, where: str, recorded: Optional[str], name=None, plan_fp: Optional[str] = None) -> None:
    """The loaded base is the delta's: by the content fingerprint it recorded (v2 or the older sampled
    v1), else (an old .pt) by the plan fingerprint."""
    allow = bool(getattr(model, "delta_allow_base_mismatch", False))
    have = getattr(model, "base_contents", None) or {}
    if recorded:
        if not bases.same_content(recorded, have):
            got = have.get(bases.fingerprint_version(recorded)) or model.base_content or "(not fingerprinted)"
            refuse(model, f"{where}: this delta was trained on a different base model: the delta records base "
                          f"{name!r} with fingerprint {recorded[:16]}…, the loaded base "
                          f"{model.base_path or '(--path)'} has {got[:16]}…; load it onto its own base "
                          f"(unifairseq-base find DELTA), or {FORCE}", allow)
        return
    if plan_fp is not None and plan_fp != model.base_fingerprint:
        refuse(model, f"{where}: this delta was trained on a different base model: the delta records base "
                      f"fingerprint {plan_fp[:16]}…, the loaded base {model.base_path!r} has "
                      f"{model.base_fingerprint[:16]}…; load it onto its own base, or {FORCE}", allow)


def check_dictionary(model, where: str, recorded: Optional[Dict[str, str]], legacy_ok: bool = False) -> None:
    """The task's dictionaries are the ones the delta was trained with (the embedding rows mean the same
    words). `legacy_ok`: a .pt delta from before dictionaries were recorded (only a warning)."""
    have = getattr(model, "dictionary_fingerprints", None) or {}
    if not have:
        return  # no task (a merge/export tool): nothing to compare with
    if not recorded:
        msg = (f"{where}: records no dictionary fingerprint, so the task's dictionary cannot be checked "
               "against the one it was trained with")
        if legacy_ok:
            logger.warning("unifairseq: " + msg + " (a delta from before they were recorded)")
            return
        refuse(model, msg + f"; re-export it with today's unifairseq, or {FORCE}",
               bool(getattr(model, "delta_allow_base_mismatch", False)))
        return
    for side, fp in recorded.items():
        if side in have and have[side] != fp:
            refuse(model, f"{where}: the task's {side} dictionary (sha256 {have[side][:16]}…) is not the one the "
                          f"delta was trained with ({fp[:16]}…): use the data-bin (dict.*.txt) it was trained on")


def check_shape(model, where: str, recorded: Dict[str, int]) -> None:
    args = getattr(model, "args", None)
    for key, want in recorded.items():
        got = getattr(args, key, None) if args is not None else None
        if key in SHAPE_ARGS and got is not None and got != want:
            refuse(model, f"{where}: the delta was trained with {key}={want}, the loaded base has {got} "
                          "(another architecture)")


def check_tensors(model, where: str, tensors: Dict[str, torch.Tensor], complete: bool = True) -> None:
    """Exactly the plan's trainable tensors, of this model's shapes, floating point. `complete`: none may
    be missing (a folder; a .pt delta's missing tensors keep their values, as fairseq's resume does)."""
    own = model.full_state_dict()
    plan = model.delta_plan
    unknown = sorted(k for k in tensors if k not in own)
    base = sorted(k for k in tensors if k in own and not plan.is_trainable(k))
    lacking = sorted(k for k in own if plan.is_trainable(k) and k not in tensors) if complete else []
    if unknown or lacking or base:
        refuse(model, f"{where}: its tensors do not fit this model's plan ({plan.describe()}): "
                      + "; ".join(p for p in (
                          f"{len(unknown)} unknown here, e.g. {unknown[0]}" if unknown else "",
                          f"{len(base)} base weight(s) the plan does not train, e.g. {base[0]}" if base else "",
                          f"{len(lacking)} missing, e.g. {lacking[0]}" if lacking else "") if p))
    for k, v in tensors.items():
        if tuple(own[k].shape) != tuple(v.shape):
            refuse(model, f"{where}: {k} has shape {tuple(v.shape)} there and {tuple(own[k].shape)} here")
        if own[k].is_floating_point() and not v.is_floating_point():
            refuse(model, f"{where}: {k} is {v.dtype}, the plan builds {own[k].dtype}")
