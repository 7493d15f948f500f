"""unifairseq-bank build / extract (the parser: tools/bank_cli.py, which imports this module only once
its arguments are parsed): a bank checkpoint over a base from delta files, and one delta of a bank
checkpoint as a single-delta checkpoint: what fairseq-train writes for that delta's own model (architecture
`delta_<family>_<size>` with the delta's flags, its tensors at single-model keys, the base's plan
fingerprint, path and info entry), so `fairseq-generate --path OUT.pt` decodes with it alone and
`unifairseq-export inference OUT.pt DIR` turns it into a shared folder. `unifairseq-export merge/hf
--delta NAME` reads a bank through `one_delta`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from fairseq import checkpoint_utils, tasks

import unifairseq.fairseq
from unifairseq.core.bank import BankError
from unifairseq.core.bases import BaseNotFound, content_fingerprint
from unifairseq.core.config import DeltaConfig
from unifairseq.core.plan import DeltaPlan
from unifairseq.core.presets import PRESETS
from unifairseq.fairseq.bank import load_bank, preset_config
from unifairseq.fairseq.checkpoint_io import (BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, atomic_save, base_name_of,
                                              find_base, fingerprint, load_checkpoint_file, str_to_tensor)
from unifairseq.fairseq.deltafolder import task_dictionaries
from unifairseq.fairseq.deltaread import parse_bank_deltas
from unifairseq.fairseq.tasks.bank import BankTaskError, DeltaBankConfig
from unifairseq.tools.tiny_base import checkpoint_state


BANK_ONLY_ARGS = ("bank_deltas", "bank_default", "bank_save_full", "bank_tasks")


def single_arch(bank_arch: str) -> str:
    """bank_bart_large -> delta_bart_large (the flags-only architecture of the same family and size)."""
    if not bank_arch.startswith("bank_"):
        raise BankError(f"{bank_arch!r} is not a bank architecture (bank_bart_base, bank_roberta_base, ...)")
    return "delta_" + bank_arch[len("bank_"):]


def load_bank_checkpoint(path: str, data: Optional[str] = None, base: Optional[str] = None):
    """(model, args) of a bank checkpoint, its base loaded (from `base`, else the path it records)."""
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
    # of the base file, as delta models record it: the model fingerprinted that file when it loaded it
    content = model.base_content or (content_fingerprint(load_checkpoint_file(bank.base_path)["model"])
                                     if bank.base_path and os.path.isfile(bank.base_path) else content_fingerprint(base_sd))
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


def delta_spec(cfg) -> str:
    """A --bank-deltas preset spec (PRESET:key=value...) that rebuilds exactly this DeltaConfig: the
    preset closest to it plus the fields that differ. A bank checkpoint's args name its deltas this way,
    so that fairseq builds their modules before it loads the base and then the trained tensors."""
    target = cfg.to_dict()
    best = None
    for name, values in PRESETS.items():
        try:
            near = DeltaConfig(**values).validate().to_dict()
        except ValueError:
            continue
        diff = [k for k in target if target[k] != near[k]]
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    spec = ":".join([best[0]] + [f"{k}={target[k]}" for k in best[1]])
    if preset_config(spec).to_dict() != target:
        raise BankTaskError(f"cannot write the delta config {cfg.describe()} as a --bank-deltas preset ({spec})")
    return spec


def _base_file(base: str) -> str:
    """--base NAME_OR_PATH by the one lookup every tool uses (unifairseq.fairseq.checkpoint_io.find_base)."""
    try:
        return find_base(base, option="--base PATH").path
    except BaseNotFound as e:
        raise BankTaskError(str(e)) from None


def build_bank_checkpoint(base: str, deltas: dict, data: str, out: str, source_lang=None, target_lang=None,
                          force: bool = False) -> List[str]:
    """Write OUT, a bank checkpoint over BASE holding the delta files {name: path} (bank index = order):
    what fairseq-generate/-interactive --task delta_bank --path OUT load. It holds the deltas and BASE's
    path, as bank checkpoints written by fairseq-train do; BASE is read again at load time."""
    base = _base_file(base)
    state = load_checkpoint_file(base)
    args = state.get("args")
    if args is None:
        raise BankTaskError(f"{base} records no model arguments ('args'); give a fairseq checkpoint of a BART base")
    arch = str(getattr(args, "arch", ""))
    if arch not in ("bart_base", "bart_large"):
        raise BankTaskError(f"{base} is a {arch!r} checkpoint; `build` writes translation banks over bart_base or "
                            f"bart_large bases (bank_roberta: use unifairseq.fairseq.bank.load_bank)")
    args = argparse.Namespace(**vars(args))
    args.data, args.task = data, "delta_bank"
    args.source_lang = source_lang or getattr(args, "source_lang", None)
    args.target_lang = target_lang or getattr(args, "target_lang", None)
    for k, v in vars(DeltaBankConfig()).items():
        if not hasattr(args, k):
            setattr(args, k, v)
    task = tasks.setup_task(args)
    model = load_bank(base, dict(deltas), task=task)
    args.arch = args._name = f"bank_{arch}"
    args.bank_deltas = ",".join(f"{n}={delta_spec(model.bank.delta_config(n))}" for n in model.bank.names)
    atomic_save(checkpoint_state(model, args), out, overwrite=force)
    return model.bank.names


def run(a) -> int:
    """The commands of unifairseq-bank (tools/bank_cli.py parses them without importing this module)."""
    unifairseq.fairseq.register()
    try:
        if a.cmd == "extract":
            arch = extract(a.bank, a.name, a.out, a.data, a.base, a.force)
            print(f"wrote {a.out}: delta {a.name!r} of {a.bank} as a single-delta {arch} checkpoint")
            return 0
        deltas = {}
        for item in a.deltas:
            name, eq, path = item.partition("=")
            if not eq or not name or not path:
                raise BankTaskError(f"{item!r} is not NAME=DELTA (a delta .pt file or folder)")
            deltas[name] = path
        names = build_bank_checkpoint(a.base, deltas, a.data, a.out, a.source_lang, a.target_lang, a.force)
    except (BankTaskError, ValueError, RuntimeError, OSError) as e:
        print(f"bank build: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: a bank of {len(names)} deltas ({', '.join(names)}) over {a.base}")
    return 0
