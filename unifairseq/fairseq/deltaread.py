"""The one reader of deltas: a delta `.pt` (never runs code), a shared delta folder (JSON + safetensors,
validated, nothing unpickled), an in-memory state, or a preset spec for a fresh delta -- as a `Delta`
(config, tensors at single-model keys, the record of its base, and the folder's JSON or the .pt's state as
read). The bank (model_bank.ModelBank.add, `--bank-deltas`, `--add-deltas`, the hub's add_delta), a folder
on a loaded base (deltafolder.apply_delta) and the exporters (tools/share.py) read through here."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from unifairseq.core.bank import BankError
from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltafile import DeltaFileError, read_delta as read_folder
from unifairseq.core.presets import PRESETS
from unifairseq.fairseq.checkpoint_io import BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, load_checkpoint_file, tensor_to_str


@dataclass
class Delta:
    config: DeltaConfig  # the method flags that rebuild its plan
    tensors: "OrderedDict[str, torch.Tensor]"  # at single-model keys, no meta entries
    record: dict  # plan_fingerprint, base_content, base_name, dictionary: each None where the source does not say
    folder: Optional[dict] = None  # a delta folder's validated JSON (core/deltafile.py)
    state: Optional[dict] = None  # a .pt's checkpoint as read (args/cfg, "model" with its meta entries)


def read(source) -> Delta:
    """`source`: a delta .pt (load_checkpoint_file: never runs code), a safetensors delta folder (DeltaFileError
    when it fails its checks), or an in-memory state {"cfg": DeltaConfig or dict or args, "model": tensors}."""
    if isinstance(source, str) and os.path.isdir(source):
        # a shared delta folder: its method flags are under "delta" (after the prefix fold attn_mode is
        # prefix_nomlp, which the folded tensors fit)
        config, tensors = read_folder(source)
        base = config["base"]
        record = dict(plan_fingerprint=base.get("plan_fingerprint") or None, base_content=base.get("fingerprint"),
                      base_name=base.get("name"), dictionary=config.get("dictionary"))
        return Delta(_config(config["delta"], source), OrderedDict(tensors), record, folder=config)
    state = load_checkpoint_file(source) if isinstance(source, str) else source
    args = state.get("cfg") or state.get("args")
    if isinstance(args, dict) and "model" in args and not isinstance(args["model"], torch.Tensor):
        args = args["model"]  # a fairseq checkpoint's cfg: the model's namespace
    tensors = OrderedDict(state["model"])
    fp = tensors.pop(FINGERPRINT_KEY, None)
    tensors.pop(BASE_PATH_KEY, None)
    info = tensors.pop(INFO_KEY, None)
    info = json.loads(tensor_to_str(info)) if info is not None else {}
    record = dict(plan_fingerprint=tensor_to_str(fp) if fp is not None else None,
                  base_content=info.get("base_content"), base_name=info.get("base_name"),
                  dictionary=info.get("dictionary"))
    return Delta(_config(args, source), tensors, record, state=state)


def read_folder_delta(folder: str) -> "tuple[dict, Dict[str, torch.Tensor]]":
    """A delta folder's validated JSON and its tensors (what the folder's own tools need)."""
    d = read(folder)
    return d.folder, d.tensors


def read_delta(source) -> "tuple[DeltaConfig, Dict[str, torch.Tensor], dict]":
    """(config, tensors, record) for the bank: a folder that fails its checks is a BankError."""
    try:
        d = read(source)
    except DeltaFileError as e:
        raise BankError(str(e)) from None
    return d.config, d.tensors, d.record


def _config(args, source) -> DeltaConfig:
    if isinstance(args, DeltaConfig):
        return args.validate()
    if isinstance(args, dict):
        fields = DeltaConfig.__dataclass_fields__
        return DeltaConfig(**{k: v for k, v in args.items() if k in fields and v is not None}).validate()
    if args is None:
        raise BankError(f"delta {source!r} records no configuration (no 'args'/'cfg'): it was not written by a "
                        "unifairseq delta model")
    return DeltaConfig.from_args(args)


def preset_config(spec: str) -> DeltaConfig:
    """`PRESET[:key=value...]`, e.g. `mam:attn_bn=16:ffn_bn=64` (keys: DeltaConfig fields or flag names)."""
    name, *overrides = spec.split(":")
    if name not in PRESETS:
        raise BankError(f"unknown preset {name!r} in --bank-deltas; choose a delta file or one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if key not in DeltaConfig.__dataclass_fields__ or not value:
            raise BankError(f"--bank-deltas {spec!r}: {item!r} is not KEY=VALUE with KEY a delta flag "
                            "(attn_bn, ffn_bn, mid_dim, lora_alpha, ...)")
        kind = DeltaConfig.__dataclass_fields__[key].type
        values[key] = int(value) if kind == "int" else float(value) if kind == "float" else value
    return DeltaConfig(**values).validate()


def parse_bank_deltas(text: str) -> "OrderedDict[str, str]":
    """`name=PATH_OR_PRESET,...` -> {name: source}."""
    out = OrderedDict()
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, eq, source = item.partition("=")
        if not eq or not source:
            raise BankError(f"--bank-deltas: {item!r} is not NAME=PATH_OR_PRESET (e.g. sum=mam,mt=lora_attn)")
        if name in out:
            raise BankError(f"--bank-deltas: the name {name!r} appears twice; give each delta its own name")
        out[name] = source
    return out


def delta_source(source: str):
    """A --bank-deltas value: an existing file/folder is a delta to load, anything else a preset."""
    return source if os.path.exists(source) else preset_config(source)
