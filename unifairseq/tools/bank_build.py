"""unifairseq-bank build / extract (the parser: tools/bank_cli.py, which imports this module only once
its arguments are parsed): a bank checkpoint over a base from delta files, and one delta of a bank
checkpoint as a single-delta checkpoint (unifairseq/fairseq/bank_export.py)."""
from __future__ import annotations

import argparse
import sys
from typing import List

from fairseq import tasks

import unifairseq.fairseq
from unifairseq.core.bases import BaseNotFound
from unifairseq.core.config import DeltaConfig
from unifairseq.core.presets import PRESETS
from unifairseq.fairseq.bank import load_bank, preset_config
from unifairseq.fairseq.bank_export import extract
from unifairseq.fairseq.checkpoint_io import atomic_save, find_base, load_checkpoint_file
from unifairseq.fairseq.tasks.bank import BankTaskError, DeltaBankConfig
from unifairseq.tools.tiny_base import checkpoint_state


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
