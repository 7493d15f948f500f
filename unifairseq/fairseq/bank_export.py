"""One delta of a bank as a single-delta checkpoint: `unifairseq-bank extract
BANK.pt NAME OUT.pt`. OUT.pt is what fairseq-train writes for that delta's own model (architecture
`delta_<family>_<size>` with the delta's flags, its tensors at single-model keys, the base's plan
fingerprint, path and info entry), so `fairseq-generate --path OUT.pt` decodes with it alone and
`unifairseq-export inference OUT.pt DIR` turns it into a shared folder."""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from unifairseq.core.bank import BankError
from unifairseq.core.bases import BaseNotFound, content_fingerprint
from unifairseq.core.plan import DeltaPlan
from unifairseq.fairseq.checkpoint_io import (BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, atomic_save, base_name_of,
                                              find_base, fingerprint, load_checkpoint_file, str_to_tensor)
from unifairseq.fairseq.deltafolder import task_dictionaries
from unifairseq.fairseq.model_bank import parse_bank_deltas

BANK_ONLY_ARGS = ("bank_deltas", "bank_default", "bank_save_full", "bank_tasks")


def single_arch(bank_arch: str) -> str:
    """bank_bart_large -> delta_bart_large (the flags-only architecture of the same family and size)."""
    if not bank_arch.startswith("bank_"):
        raise BankError(f"{bank_arch!r} is not a bank architecture (bank_bart_base, bank_roberta_base, ...)")
    return "delta_" + bank_arch[len("bank_"):]


def load_bank_checkpoint(path: str, data: Optional[str] = None, base: Optional[str] = None):
    """(model, args) of a bank checkpoint, its base loaded (from `base`, else the path it records)."""
    from fairseq import checkpoint_utils, tasks

    state = load_checkpoint_file(path)
    args = state.get("args") or (state.get("cfg") or {}).get("model")
    if args is None or not str(getattr(args, "arch", "")).startswith("bank_"):
        raise BankError(f"{path} is not a bank checkpoint (its model args name no bank_* architecture)")
    args = argparse.Namespace(**vars(args))
    if data:
        args.data = data
    if not getattr(args, "data", None) or not os.path.isdir(str(args.data)):
        raise BankError(f"the data folder of {path} ({getattr(args, 'data', None)!r}) is not there: pass --data "
                        "DIR (fairseq-preprocess output with the base's dictionaries)")
    if base:  # a name or a path, by the one lookup (the model would resolve it the same way)
        try:
            base = find_base(base, option="--base PATH").path
        except BaseNotFound as e:
            raise BankError(str(e)) from None
        args.delta_base = base
    task = tasks.setup_task(args)
    overrides = {"data": args.data, **({"delta_base": base} if base else {})}
    (model,), _ = checkpoint_utils.load_model_ensemble([path], arg_overrides=overrides, task=task)
    # what a single-delta model records of the task's dictionaries, so the extracted delta gets the same
    # dictionary check as any other (an empty record is refused)
    model.dictionary_fingerprints = task_dictionaries(task, encoder_decoder=hasattr(model, "decoder"))
    return model, args


def single_delta_state(model, args, name: str) -> dict:
    """The checkpoint a single-delta model of `name` would have written (fairseq-train's layout)."""
    # the one writer of fairseq's checkpoint layout sits with the tools above this layer
    from unifairseq.tools.tiny_base import checkpoint_state

    bank = model.bank
    cfg = bank.delta_config(name)
    out = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in BANK_ONLY_ARGS})
    out.arch = out._name = single_arch(args.arch)
    for k, v in cfg.to_dict().items():
        setattr(out, k, v)
    sd = dict(bank.delta_state(name))
    base_sd = bank.base_state()
    sd[FINGERPRINT_KEY] = str_to_tensor(fingerprint(base_sd, DeltaPlan(cfg)))  # what the model's check compares
    sd[BASE_PATH_KEY] = str_to_tensor(bank.base_path or "")
    content = content_fingerprint(load_checkpoint_file(bank.base_path)["model"]) if bank.base_path and \
        os.path.isfile(bank.base_path) else content_fingerprint(base_sd)  # of the base file, as delta models do
    info = dict(base_name=base_name_of(bank.base_path, getattr(args, "delta_base", None)), base_content=content,
                dictionary=getattr(model, "dictionary_fingerprints", None) or {})
    sd[INFO_KEY] = str_to_tensor(json.dumps(info, sort_keys=True))
    state = checkpoint_state(model, out)
    state["model"] = sd
    return state


def extract(bank_path: str, name: str, out: str, data: Optional[str] = None, base: Optional[str] = None,
            force: bool = False) -> str:
    model, args = load_bank_checkpoint(bank_path, data, base)
    model.bank.index(name)  # a name the bank has, or the error listing them
    atomic_save(single_delta_state(model, args, name), out, overwrite=force)
    return single_arch(args.arch)


def bank_delta_names(path: str) -> Optional[list]:
    """The delta names of a bank checkpoint (bank index order), or None when `path` is no bank checkpoint
    (a single-delta .pt or a delta folder)."""
    if not os.path.isfile(path):
        return None
    state = load_checkpoint_file(path)
    args = state.get("args") or (state.get("cfg") or {}).get("model")
    get = args.get if isinstance(args, dict) else (lambda k: getattr(args, k, None))
    if args is None or not str(get("arch") or "").startswith("bank_"):
        return None
    return list(parse_bank_deltas(get("bank_deltas") or ""))


def one_delta(path: str, name: Optional[str], out_dir: str, what: str, data: Optional[str] = None,
              base: Optional[str] = None) -> str:
    """What a one-delta export (merge, hf) reads: `path` itself, or, for a bank checkpoint, the delta
    `name` extracted into out_dir. A bank without `name` is refused: a merge is of one delta."""
    names = bank_delta_names(path)
    if names is None:
        if name is not None:
            raise BankError(f"--delta {name}: {path} holds one delta, not a bank; drop --delta")
        return path
    if name is None:
        raise BankError(f"{path} is a delta bank of {len(names)} deltas ({', '.join(names)}); {what} takes one: "
                        f"pick it with --delta NAME")
    if name not in names:
        raise BankError(f"--delta {name}: {path} holds {', '.join(names)}; pick one of those")
    out = os.path.join(out_dir, f"{name}.pt")
    extract(path, name, out, data=data, base=base)
    return out

