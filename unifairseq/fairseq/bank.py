"""The delta bank on fairseq models: build a bank, add / remove deltas, read delta files.

    from unifairseq.fairseq.bank import load_bank
    model = load_bank(bank_model_or_base_path, {"sum": "sum.pt", "mt": "mt.pt"}, task=task)
    model.bank.names                       # ["sum", "mt"] (bank index = position)
    model.bank.add("ro", "ro.pt")          # nothing else is reloaded; the base is never touched
    model.bank.remove("sum")
    sample["net_input"]["delta_ids"] = model.bank.ids(["mt", None, "ro"])   # None: bank.default

This module is the API: load_bank and load_hub (which build a delta model of N deltas over a base file, so they
sit above models/) and the names of the mechanism, unifairseq.fairseq.model_bank (ModelBank: what a delta of a
bank is, what is refused and why).
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Optional

from unifairseq.core.bank import BankError
from unifairseq.core.config import DeltaConfigError
from unifairseq.core.bases import BaseNotFound
from unifairseq.fairseq.checkpoint_io import find_base, load_checkpoint_file
from unifairseq.fairseq.hub import hub_class
from unifairseq.fairseq.deltaread import delta_source, parse_bank_deltas, preset_config, read_delta
from unifairseq.fairseq.model_bank import BANK_ATTR, ModelBank, attach_bank, build_delta_set
from unifairseq.fairseq.models.bart import DeltaBARTModel
from unifairseq.fairseq.models.roberta import DeltaRobertaModel


def load_bank(base, deltas: Dict[str, object], task=None, default: Optional[str] = None,
              allow_base_mismatch: bool = False):
    """A bank model with these deltas. `base`: a bank model (deltas are added to it), or the path of a
    plain fairseq base checkpoint (then `task` gives the dictionaries; the base is read once)."""
    if isinstance(base, str):
        if task is None:
            raise BankError("load_bank from a base checkpoint path needs the fairseq task (its dictionaries): "
                            "load_bank(path, deltas, task=task)")
        model = build_bank_from_base(base, task)
    else:
        model = base
    if getattr(model, "bank", None) is None or not isinstance(model.bank, ModelBank):
        raise BankError("load_bank needs a bank model (--arch bank_bart_base/bank_bart_large/bank_roberta_base) or "
                        "a base checkpoint path")
    model.bank.allow_base_mismatch = allow_base_mismatch
    for name, source in deltas.items():
        model.bank.add(name, source)
    if default is not None:
        model.bank.index(default)
        model.bank.default = default
    return model



def load_hub(base: str, deltas: Optional[Dict[str, object]] = None, data: Optional[str] = None,
             default: Optional[str] = None, **overrides):
    """The hub (fairseq/hub.py) of one base, found by name or path as everywhere else (core/bases.py), serving
    `deltas` ({name: delta .pt, delta folder or in-memory state}), each checked against that base; more are
    added with hub.add_delta. `data`: the folder of the task's dictionaries (default: the base's own folder,
    as fairseq's from_pretrained reads it); `overrides` are task/model args (source_lang, bpe, ...)."""
    from fairseq import tasks  # fairseq's task registry: only when a hub is built

    try:
        path = find_base(base, option="the base NAME_OR_PATH").path
    except BaseNotFound as e:
        raise BankError(str(e)) from None
    state = load_checkpoint_file(path)  # read once: its args set the task up, its weights are the base
    args = _base_args(path, state)
    args.data = data or os.path.dirname(path)
    for k, v in overrides.items():
        setattr(args, k, v)
    task = tasks.setup_task(args)
    model = load_bank(build_bank_from_base(path, task, args, state), deltas or {}, task=task, default=default)
    return hub_class(model).from_model(model.eval(), task)


def _base_args(path: str, state) -> argparse.Namespace:
    args = state.get("args")
    if args is None and state.get("cfg") is not None:
        cfg = state["cfg"]
        args = argparse.Namespace(**{**dict(cfg.get("task") or {}), **dict(cfg["model"])})
    if args is None:
        raise BankError(f"{path!r} records no model arguments; give a fairseq checkpoint of the base model")
    return argparse.Namespace(**vars(args))


def build_bank_from_base(path: str, task, args: Optional[argparse.Namespace] = None, state: Optional[dict] = None):
    """A bank model (no deltas yet) over a plain fairseq base checkpoint: the base is read once (`state`: the
    file, read already)."""
    state = state if state is not None else load_checkpoint_file(path)
    args = argparse.Namespace(**vars(args if args is not None else _base_args(path, state)))
    args.bank_deltas = ""  # a model of N deltas (none yet): model_bank.is_bank_args
    cls = DeltaRobertaModel if "roberta" in str(getattr(args, "arch", "")) else DeltaBARTModel
    model = cls.build_model(args, task)
    model.load_base(path, state)
    return model


__all__ = ["load_bank", "load_hub", "build_bank_from_base", "attach_bank", "build_delta_set", "read_delta", "preset_config",
           "parse_bank_deltas", "delta_source", "ModelBank", "BANK_ATTR", "BankError", "DeltaConfigError"]
