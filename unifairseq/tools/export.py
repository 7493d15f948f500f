"""unifairseq-export: turn a training checkpoint into what inference needs.

    unifairseq-export inference CKPT OUT   small delta file: no optimizer state, the prefix
                                           reparametrization MLP folded into static vectors
    unifairseq-export merge CKPT OUT       LoRA (and BitFit) merged into the base weights: a plain
                                           fairseq checkpoint that vanilla fairseq loads, no --user-dir
    unifairseq-export unmerge MERGED CKPT OUT   the merged LoRA taken back out: the base again

Everything works on state dicts (no data directory or task needed). Outputs are written
atomically and never replace an existing file unless --force is given.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections import OrderedDict
from typing import Dict, Optional

import torch

from unifairseq.fairseq.checkpoint import (BASE_PATH_KEY, FINGERPRINT_KEY, META_KEYS, DeltaCheckpointError, _tensor_to_str,
                         atomic_save, load_checkpoint_file)
from unifairseq.core.config import DeltaConfig
from unifairseq.core.prefix import PrefixProvider

logger = logging.getLogger("unifairseq.tools.export")

PREFIX_MLP_SUFFIXES = ("wte.weight", "mlp_down.weight", "mlp_down.bias", "mlp_up.weight", "mlp_up.bias")


# ------------------------------------------------------------------ helpers
def model_args(state: dict):
    """The model's args (a Namespace) from a fairseq checkpoint, new (cfg) or old (args) style."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"]
    if state.get("args") is not None:
        return state["args"]
    raise DeltaCheckpointError("the checkpoint holds no model configuration (neither cfg.model nor args)")


def set_model_arg(state: dict, name: str, value) -> None:
    for holder in (state.get("cfg", {}) or {}).get("model"), state.get("args"):
        if holder is not None:
            if isinstance(holder, dict):
                holder[name] = value
            else:
                setattr(holder, name, value)


def delta_config(state: dict) -> DeltaConfig:
    return DeltaConfig.from_args(model_args(state))


def fold_prefix_mlps(model_sd: Dict[str, torch.Tensor]) -> int:
    """Replace every prefix MLP (wte, mlp_down, mlp_up) by the vectors it computes. Returns the
    number of parameters dropped."""
    owners = sorted({k[: -len("wte.weight")] for k in model_sd if k.endswith("delta_prefix.wte.weight")
                     or k.endswith("delta_prefix_self.wte.weight") or k.endswith("delta_prefix_cross.wte.weight")})
    dropped = 0
    for owner in owners:
        t = {s: model_sd.pop(owner + s) for s in PREFIX_MLP_SUFFIXES}
        length, dim = t["wte.weight"].shape
        mid = t["mlp_down.weight"].shape[0]
        layers = t["mlp_up.weight"].shape[0] // (2 * dim)
        prov = PrefixProvider(layers, length, dim, mid_dim=mid)
        prov.load_state_dict(t)
        with torch.no_grad():
            P = prov.all_layers().detach().clone()
        model_sd[owner + "prefix"] = P
        dropped += sum(v.numel() for v in t.values()) - P.numel()
    return dropped


def lora_pairs(model_sd):
    """(base weight key, W_down key, W_up key) for every LoRA site."""
    for k in model_sd:
        if k.endswith(".delta_lora.W_down.weight"):
            site = k[: -len(".delta_lora.W_down.weight")]
            yield site + ".weight", k, site + ".delta_lora.W_up.weight"


def check_mergeable(delta: DeltaConfig) -> None:
    ok_attn = delta.attn_mode in ("none", "lora", "bitfit")
    ok_ffn = delta.ffn_mode in ("none", "lora")
    if not (ok_attn and ok_ffn):
        what = [m for m, ok in ((f"--attn-mode {delta.attn_mode}", ok_attn), (f"--ffn-mode {delta.ffn_mode}", ok_ffn))
                if not ok]
        raise DeltaCheckpointError(
            f"cannot merge {' and '.join(what)} into the base weights: prefixes, adapters and prompts add "
            "computation that a plain fairseq model does not have. Only LoRA (and BitFit) merge; use "
            "`unifairseq-export inference` for a small delta file that fairseq-generate --user-dir loads")


def load_base_for(state: dict, path: str, base_override: Optional[str]) -> dict:
    stored = _tensor_to_str(state["model"][BASE_PATH_KEY]) if BASE_PATH_KEY in state["model"] else None
    base_path = base_override or stored
    if not base_path:
        raise DeltaCheckpointError(f"{path!r} records no base model; pass it with --base PATH")
    if not os.path.isfile(base_path):
        raise DeltaCheckpointError(f"the base {base_path!r} recorded in {path!r} is not there; pass --base PATH")
    return load_checkpoint_file(base_path)


def parent_arch(arch: str) -> str:
    from unifairseq.fairseq.models.common import ARCH_PARENT

    if arch not in ARCH_PARENT:
        raise DeltaCheckpointError(f"unknown delta architecture {arch!r}; cannot name its plain fairseq parent")
    return ARCH_PARENT[arch]


# ----------------------------------------------------------------- commands
def export_inference(path: str, out: str, force: bool = False) -> dict:
    state = load_checkpoint_file(path)
    delta = delta_config(state)
    sd = OrderedDict(state["model"])
    if FINGERPRINT_KEY not in sd:
        raise DeltaCheckpointError(f"{path!r} is not a delta checkpoint (no base fingerprint); "
                                   "train with a delta architecture, or use `merge` for LoRA")
    dropped = fold_prefix_mlps(sd)
    new = copy.copy(state)
    new["model"] = sd
    new["last_optimizer_state"] = None
    new["optimizer_history"] = [{k: v for k, v in h.items() if k != "optimizer"}
                                for h in state.get("optimizer_history", [])[-1:]]
    if dropped:
        new["cfg"] = copy.deepcopy(state.get("cfg"))
        new["args"] = copy.deepcopy(state.get("args"))
        set_model_arg(new, "attn_mode", "prefix_nomlp")
    _refuse_same_file(path, out)
    atomic_save(new, out, overwrite=force)
    params = sum(v.numel() for k, v in sd.items() if k not in META_KEYS)
    logger.info(f"wrote {out}: {params:,} parameters ({os.path.getsize(out):,} bytes); "
                f"dropped {dropped:,} prefix-MLP parameters and the optimizer state ({delta.describe()})")
    return dict(params=params, dropped=dropped, bytes=os.path.getsize(out))


def export_merge(path: str, out: str, base: Optional[str] = None, force: bool = False) -> dict:
    state = load_checkpoint_file(path)
    delta = delta_config(state)
    check_mergeable(delta)
    base_state = load_base_for(state, path, base)
    merged = OrderedDict(base_state["model"])
    sd = state["model"]
    for w, down, up in lora_pairs(sd):
        r = sd[down].shape[0]
        s = delta.lora_alpha / r
        merged[w] = merged[w] + (s * (sd[up].float() @ sd[down].float())).to(merged[w].dtype)
    if delta.bitfit:
        for k, v in sd.items():
            if k.endswith("bias") and k not in META_KEYS:
                merged[k] = v.clone()
    # the layout of fairseq's released checkpoints: the model args (argparse.Namespace) with the plain
    # parent architecture, one optimizer-history entry without optimizer state
    new = {"model": merged, "args": copy.deepcopy(state.get("args")), "cfg": copy.deepcopy(state.get("cfg")),
           "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                  "lr_scheduler_state": {"best": None}, "num_updates": 0}],
           "extra_state": {}, "last_optimizer_state": None}
    arch = getattr(model_args(state), "arch", None) if not isinstance(model_args(state), dict) \
        else model_args(state).get("arch")
    parent = parent_arch(arch)
    set_model_arg(new, "arch", parent)
    set_model_arg(new, "_name", parent)
    if new["cfg"] is not None and new["cfg"].get("common") is not None:
        new["cfg"]["common"]["user_dir"] = None  # vanilla fairseq needs no plugin for this file
    _refuse_same_file(path, out)
    atomic_save(new, out, overwrite=force)
    logger.info(f"wrote {out}: plain fairseq {parent} checkpoint with LoRA merged ({os.path.getsize(out):,} bytes)")
    return dict(bytes=os.path.getsize(out), arch=parent)


def export_unmerge(merged_path: str, delta_path: str, out: str, force: bool = False) -> dict:
    merged = load_checkpoint_file(merged_path)
    state = load_checkpoint_file(delta_path)
    delta = delta_config(state)
    check_mergeable(delta)
    if delta.bitfit:
        raise DeltaCheckpointError("BitFit replaced the base biases when merging; they cannot be recovered from "
                                   "the merged file. Use the base checkpoint itself")
    base = OrderedDict(merged["model"])
    sd = state["model"]
    for w, down, up in lora_pairs(sd):
        s = delta.lora_alpha / sd[down].shape[0]
        base[w] = base[w] - (s * (sd[up].float() @ sd[down].float())).to(base[w].dtype)
    new = dict(merged)
    new["model"] = base
    _refuse_same_file(merged_path, out)
    atomic_save(new, out, overwrite=force)
    logger.info(f"wrote {out}: LoRA taken back out of {merged_path}")
    return dict(bytes=os.path.getsize(out))


def _refuse_same_file(src: str, out: str) -> None:
    if os.path.abspath(src) == os.path.abspath(out):
        raise DeltaCheckpointError(f"the output {out!r} is the input file; write the export to a new path")


def main(argv=None) -> int:
    logging.basicConfig(format="%(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    import unifairseq.fairseq.models  # noqa: F401  (architecture names, safe globals)

    ap = argparse.ArgumentParser(prog="unifairseq-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inference", help="small delta file for inference (prefix MLP folded, no optimizer)")
    p.add_argument("ckpt"), p.add_argument("out")
    p = sub.add_parser("merge", help="merge LoRA/BitFit into the base: a plain fairseq checkpoint")
    p.add_argument("ckpt"), p.add_argument("out")
    p.add_argument("--base", help="base checkpoint (default: the path recorded in CKPT)")
    p = sub.add_parser("unmerge", help="take a merged LoRA back out of a merged checkpoint")
    p.add_argument("merged"), p.add_argument("ckpt"), p.add_argument("out")
    for p in sub.choices.values():
        p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "inference":
            export_inference(a.ckpt, a.out, a.force)
        elif a.cmd == "merge":
            export_merge(a.ckpt, a.out, a.base, a.force)
        else:
            export_unmerge(a.merged, a.ckpt, a.out, a.force)
    except DeltaCheckpointError as e:
        print(f"unifairseq-export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
