"""unifairseq-export: turn a training checkpoint into what inference needs (the commands: tools/export_cli.py).

The math is the methods' own (core/methods/: `LinearDelta.merged` / `unmerged`, `PrefixProvider.fold`):
each site's module is built from the checkpoint's plan and loaded with its trained values, on state
dicts (no data directory or task needed). Outputs are written atomically and never replace an
existing file unless --force is given.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

import torch

from unifairseq.core.bases import BaseNotFound
from unifairseq.core.config import DeltaConfig
from unifairseq.core.methods import METHODS
from unifairseq.core.methods.prefix import PrefixProvider
from unifairseq.core.modules import LinearDelta, is_delta_name
from unifairseq.core.plan import DeltaPlan
from unifairseq.fairseq.ckpt_args import model_args, parent_arch, set_model_arg
from unifairseq.fairseq.plain_args import primitive_args, unloadable_objects
from unifairseq.fairseq.checkpoint_io import (find_base, BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, META_KEYS,
                                              DeltaCheckpointError, atomic_save, load_checkpoint_file,
                                              tensor_to_str as _tensor_to_str)
from unifairseq.tools.share import read_input, write_shared

logger = logging.getLogger("unifairseq.export")

UNMERGE_KEY = "unifairseq_unmerge"  # what an exact unmerge needs beside the merged weights (DoRA's norms)
HEAD_PREFIX = "classification_heads."


# ------------------------------------------------------------- the input
class LoadedDelta:
    """One export input, read once: the checkpoint (a `.pt`, or a delta folder presented as one by
    tools/share.read_input), its plan, its classification heads, and -- on first use, then kept -- its
    base's path and checkpoint. Every exporter takes one (or a path, which it loads)."""

    def __init__(self, path: str, state: dict, base_flag: Optional[str] = None):
        self.path, self.state, self.base_flag = path, state, base_flag
        self._plan = self._base_path = self._base_state = None

    @classmethod
    def read(cls, path: str, base_flag: Optional[str] = None, with_base_args: bool = True) -> "LoadedDelta":
        """`with_base_args`: a folder's args are its base's, with the delta's flags on top (what a merge
        writes); else the folder's own (share.read_input)."""
        return cls(path, read_input(path, base_flag, with_base_args=with_base_args), base_flag)

    @property
    def sd(self) -> Dict[str, torch.Tensor]:
        return self.state["model"]

    @property
    def is_delta(self) -> bool:
        return FINGERPRINT_KEY in self.sd

    @property
    def plan(self) -> DeltaPlan:
        if self._plan is None:
            self._plan = delta_plan(self.state)
        return self._plan

    @property
    def heads(self) -> list:
        """The names of the trained classification heads it holds."""
        return sorted({k.split(".")[1] for k in self.sd if k.startswith(HEAD_PREFIX)})

    @property
    def base_path(self) -> str:
        if self._base_path is None:
            self._base_path = base_file_for(self.state, self.path, self.base_flag)
        return self._base_path

    @property
    def base_state(self) -> dict:
        """The base checkpoint, in the names the delta model uses (load_base_for); exporters copy its
        "model" dict before changing entries, never change it in place."""
        if self._base_state is None:
            self._base_state = load_base_for(self.state, self.path, self.base_flag, self.base_path)
        return self._base_state


def _loaded(src, base: Optional[str], with_base_args: bool) -> LoadedDelta:
    return src if isinstance(src, LoadedDelta) else LoadedDelta.read(src, base, with_base_args)


# ------------------------------------------------------------------ helpers
def delta_plan(state: dict) -> DeltaPlan:
    return DeltaPlan(DeltaConfig.from_args(model_args(state)))


def fold_prefix_mlps(model_sd: Dict[str, torch.Tensor]) -> int:
    """Replace every prefix MLP (wte, mlp_down, mlp_up) by the vectors it computes, through
    PrefixProvider.fold(). Returns the number of parameters dropped."""
    owners = sorted({k[: -len("wte.weight")] for k in model_sd
                     if k.endswith(".wte.weight") and k.split(".")[-3].startswith("delta_prefix")})
    dropped = 0
    for owner in owners:
        t = {k[len(owner):]: model_sd.pop(k) for k in [k for k in model_sd if k.startswith(owner)]}
        prov = PrefixProvider.from_state(t)
        before = sum(v.numel() for v in t.values())
        prov.fold()
        for k, v in prov.state_dict().items():
            model_sd[owner + k] = v
        dropped += before - prov.prefix.numel()
    return dropped


def linear_deltas(plan: DeltaPlan, delta_sd: Dict[str, torch.Tensor], base_sd: Dict[str, torch.Tensor]):
    """(host, LinearDelta module with the trained values) for every projection with a delta: the
    module is the method's own, built from the plan for that site and loaded from the checkpoint."""
    names = {m.module_name for m in METHODS.values() if m.module_name}
    hosts = {}
    for k in delta_sd:
        parts = k.split(".")
        for i, part in enumerate(parts):
            if part in names:
                hosts.setdefault(".".join(parts[:i]), part)
                break
    for host, module_name in sorted(hosts.items()):
        site = host.split(".")[-1]
        kind = "cross" if ".encoder_attn." in host + "." else "self"
        spec = plan.at(site, kind)
        if spec is None or METHODS[spec.method].module_name != module_name:
            raise DeltaCheckpointError(f"{host}.{module_name}: the checkpoint's flags put no such delta at {site}")
        W = base_sd[host + ".weight"]
        module: LinearDelta = plan.build(spec, in_features=W.shape[1], out_features=W.shape[0])
        pre = f"{host}.{module_name}."
        module.load_state_dict({k[len(pre):]: v for k, v in delta_sd.items() if k.startswith(pre)})
        yield host, module


def refuse_unmergeable(plan: DeltaPlan) -> None:
    bad = [m for m in plan.methods if m.merge != "merge"]
    if bad:
        cfg = plan.cfg
        what = [f"--{side}-mode {getattr(cfg, side + '_mode')}" for side in ("attn", "ffn")
                if any(getattr(cfg, side + "_mode") in getattr(m, side + "_modes") for m in bad)]
        raise DeltaCheckpointError(
            f"cannot merge {' and '.join(what)} into the base weights ({', '.join(m.name for m in bad)}): prefixes, "
            "adapters and prompts add computation that a plain fairseq model does not have. Only "
            f"{', '.join(m.name for m in METHODS.values() if m.merge == 'merge')} merge; use "
            "`unifairseq-export inference` for a small delta file that fairseq-generate --user-dir loads")


def base_file_for(state: dict, path: str, base_override: Optional[str]) -> str:
    """The base of the delta `state` (read from `path`) by the one lookup (checkpoint.find_base): --base
    (a name or a path), else the delta's recorded name, path and content fingerprint."""

    sd = state["model"]
    stored = _tensor_to_str(sd[BASE_PATH_KEY]) if BASE_PATH_KEY in sd else None
    info = json.loads(_tensor_to_str(sd[INFO_KEY])) if INFO_KEY in sd else {}
    if not (base_override or stored or info.get("base_name")):
        raise DeltaCheckpointError(f"{path!r} records no base model; pass it with --base NAME_OR_PATH")
    try:
        return find_base(base_override, info.get("base_name"), info.get("base_content"), stored or None,
                         option="--base PATH").path
    except BaseNotFound as e:
        raise DeltaCheckpointError(f"{path}: {e}") from None


def load_base_for(state: dict, path: str, base_override: Optional[str], base_path: Optional[str] = None) -> dict:
    """The base checkpoint of the delta `state` (`base_path` when the caller resolved it already)."""
    from unifairseq.convert.fairseq_to_hf import upgrade_legacy  # the HF converter imports transformers

    base_path = base_path or base_file_for(state, path, base_override)

    base = load_checkpoint_file(base_path)
    # the names the delta model uses: a pre-0.10 file (the released roberta.* among them) renamed as
    # fairseq's own loader renames it (decoder. -> encoder., fused in_proj split into q/k/v, ...)
    base["model"] = upgrade_legacy(base["model"])
    return base


# ----------------------------------------------------------------- commands
def export_inference(src, out: str, force: bool = False, base: Optional[str] = None, dicts=None) -> dict:
    """`src`: a LoadedDelta, or the path of a `.pt` delta checkpoint."""
    delta = src if isinstance(src, LoadedDelta) else LoadedDelta(src, load_checkpoint_file(src), base)
    path, state, base = delta.path, delta.state, delta.base_flag
    plan = delta.plan
    sd = OrderedDict(state["model"])
    if FINGERPRINT_KEY not in sd:
        raise DeltaCheckpointError(f"{path!r} is not a delta checkpoint (no base fingerprint); "
                                   "train with a delta architecture, or use `merge` for LoRA")
    dropped = fold_prefix_mlps(sd) if any(m.merge == "fold" for m in plan.methods) else 0
    new = copy.copy(state)
    new["model"] = sd
    new["last_optimizer_state"] = None
    new["optimizer_history"] = [{k: v for k, v in h.items() if k != "optimizer"}
                                for h in state.get("optimizer_history", [])[-1:]]
    if dropped:
        new["cfg"] = copy.deepcopy(state.get("cfg"))
        new["args"] = copy.deepcopy(state.get("args"))
        for m in plan.methods:
            for k, v in (m.folded_args() if m.merge == "fold" else {}).items():
                set_model_arg(new, k, v)
    _refuse_same_file(path, out)
    params = sum(v.numel() for k, v in sd.items() if k not in META_KEYS)
    if not out.endswith(".pt"):  # the shareable folder
        config = write_shared(new, path, out, base, force, dicts)
        logger.info(f"wrote {out}/: {params:,} parameters in {config['tensors']['count']} tensors; dropped "
                    f"{dropped:,} prefix-MLP parameters and the optimizer state ({plan.describe()})")
        return dict(params=params, dropped=dropped, config=config,
                    bytes=sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)))
    atomic_save(new, out, overwrite=force)
    logger.info(f"wrote {out}: {params:,} parameters ({os.path.getsize(out):,} bytes); "
                f"dropped {dropped:,} prefix-MLP parameters and the optimizer state ({plan.describe()})")
    return dict(params=params, dropped=dropped, bytes=os.path.getsize(out))


def export_merge(src, out: str, base: Optional[str] = None, force: bool = False) -> dict:
    """Each method merges its own sites (LinearDelta.merged; BitFit's biases replace the base's);
    trained task heads travel with the merged model. `src`: a LoadedDelta (read with the base's args),
    or a path (a `.pt` or a delta folder)."""
    delta = _loaded(src, base, with_base_args=True)
    new, parent = merged_state(delta)
    path, plan = delta.path, delta.plan
    _refuse_same_file(path, out)
    atomic_save(new, out, overwrite=force)
    logger.info(f"wrote {out}: plain fairseq {parent} checkpoint with {', '.join(m.name for m in plan.methods)} "
                f"merged ({os.path.getsize(out):,} bytes)")
    return dict(bytes=os.path.getsize(out), arch=parent)


def merged_state(delta: LoadedDelta):
    """(the merged plain fairseq checkpoint export_merge writes, its parent architecture), in memory."""
    path, state = delta.path, delta.state
    plan = delta.plan
    refuse_unmergeable(plan)
    base_state = delta.base_state
    merged = OrderedDict(base_state["model"])
    sd = state["model"]
    unmerge = {}
    with torch.no_grad():
        for host, module in linear_deltas(plan, sd, merged):
            W, b = merged[host + ".weight"], merged.get(host + ".bias")
            record = module.unmerge_record(W.float())
            if record is not None:
                unmerge[host] = record
            W2, b2 = module.merged(W.float(), None if b is None else b.float())
            merged[host + ".weight"] = W2.to(W.dtype)
            if b is not None:
                merged[host + ".bias"] = b2.to(b.dtype)
    for k, v in sd.items():  # what a plan trains in place (BitFit's biases) and the task heads
        if k not in META_KEYS and (k.startswith(HEAD_PREFIX) or (not is_delta_name(k) and plan.is_trainable(k))):
            merged[k] = v.clone()
    # the layout of fairseq's released checkpoints: the model args with the plain parent architecture,
    # one optimizer-history entry without optimizer state
    new = {"model": merged, "args": copy.deepcopy(state.get("args")), "cfg": copy.deepcopy(state.get("cfg")),
           "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                  "lr_scheduler_state": {"best": None}, "num_updates": 0}],
           "extra_state": {}, "last_optimizer_state": None}
    if unmerge:
        new[UNMERGE_KEY] = unmerge
    args = model_args(state)
    arch = args.get("arch") if isinstance(args, dict) else getattr(args, "arch", None)
    parent = parent_arch(arch)
    set_model_arg(new, "arch", parent)
    set_model_arg(new, "_name", parent)
    if new["cfg"] is not None and new["cfg"].get("common") is not None:
        new["cfg"]["common"]["user_dir"] = None  # vanilla fairseq needs no plugin for this file
    set_model_arg(new, "user_dir", None)
    return plain_fairseq_state(new, path, "merged"), parent


def export_unmerge(merged_path: str, src, out: str, force: bool = False) -> dict:
    """`src`: the delta, a LoadedDelta read with its own args (with_base_args=False), or a path."""
    merged = load_checkpoint_file(merged_path)
    delta = _loaded(src, None, with_base_args=False)
    state, plan = delta.state, delta.plan
    refuse_unmergeable(plan)
    for m in plan.methods:
        if m.unmerge_refusal:
            raise DeltaCheckpointError(m.unmerge_refusal)
    base = OrderedDict(merged["model"])
    sd = state["model"]
    norms = merged.get(UNMERGE_KEY) or {}  # what each site's unmerge needs (LinearDelta.unmerge_record)
    with torch.no_grad():
        for host, module in linear_deltas(plan, sd, base):
            W, b = base[host + ".weight"], base.get(host + ".bias")
            W2, b2 = module.unmerged(W.float(), None if b is None else b.float(), norms.get(host))
            base[host + ".weight"] = W2.to(W.dtype)
            if b is not None:
                base[host + ".bias"] = b2.to(b.dtype)
    for k in [k for k in base if k.startswith(HEAD_PREFIX) and k in sd]:
        del base[k]  # the delta's task head is not part of the base
    new = {k: v for k, v in merged.items() if k != UNMERGE_KEY}
    new["model"] = base
    new = plain_fairseq_state(new, merged_path, "unmerged")  # a base plain fairseq loads, like the merged file
    _refuse_same_file(merged_path, out)
    atomic_save(new, out, overwrite=force)
    logger.info(f"wrote {out}: {', '.join(m.name for m in plan.methods)} taken back out of {merged_path}")
    return dict(bytes=os.path.getsize(out))


def plain_fairseq_state(state: dict, path: str, what: str) -> dict:
    """`state` with nothing torch's default weights-only load refuses (the args as an OrderedDict:
    plain_args.py says why), so that plain fairseq loads the file without --user-dir or an allow-list."""

    new = primitive_args(state)
    left = unloadable_objects(new)
    if left:
        raise DeltaCheckpointError(f"{path}: the {what} checkpoint would hold objects that plain torch.load "
                                   f"refuses ({'; '.join(left[:3])}); not written")
    return new


def _refuse_same_file(src: str, out: str) -> None:
    if os.path.abspath(src) == os.path.abspath(out):
        raise DeltaCheckpointError(f"the output {out!r} is the input file; write the export to a new path")



if __name__ == "__main__":  # the command line is tools/export_cli.py; this module is its library
    raise SystemExit("unifairseq/tools/export.py is a library: run unifairseq-export "
                     "(or python -m unifairseq.tools.export_cli)")
