"""A base of another size than the architecture: one line naming both sizes and the fix.

Without it, `fairseq-train --arch mam_bart_large --finetune-from-model bart.base/model.pt` dies in
torch's load_state_dict with one size-mismatch line per tensor (93 for BART) and two tracebacks.
`other_size` compares the sizes the two state dicts imply before any tensor is copied; the loaders
(checkpoint.py) raise its line as a DeltaCheckpointError.
"""
from __future__ import annotations

import argparse
import re
from typing import Dict, Optional

import torch

# (what the line calls it, the key prefix whose numbered children are the layers)
_STACKS = (("encoder", "encoder.layers."), ("decoder", "decoder.layers."),
           ("encoder", "encoder.sentence_encoder.layers."))


def sizes(sd: Dict[str, torch.Tensor]) -> dict:
    """embed_dim and the layer count of each stack, read off the tensor names and shapes."""
    out = {}
    for k, v in sd.items():
        if k.endswith("embed_tokens.weight") and v.dim() == 2:
            out["embed_dim"] = int(v.shape[1])
            break
    for stack, prefix in _STACKS:
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        n = len({m.group(1) for k in sd for m in [pat.match(k)] if m})
        if n:
            out[f"{stack}_layers"] = n
    return out


def _describe(s: dict, keys=False) -> str:
    enc, dec = s.get("encoder_layers"), s.get("decoder_layers")
    layers = str(enc) if dec is None or dec == enc else f"{enc} encoder + {dec} decoder"
    return f"embed_dim {s.get('embed_dim')}, layers {layers}" if keys else f"{s.get('embed_dim')}, {layers}"


def _arch_of_size(arch: str, want: dict) -> Optional[str]:
    """The sibling preset (<method>_<family>_<size>) whose defaults build the base's sizes."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    stem = arch.rsplit("_", 1)[0]
    for name, fn in ARCH_CONFIG_REGISTRY.items():
        if name == arch or name.rsplit("_", 1)[0] != stem:
            continue
        a = argparse.Namespace()
        try:
            fn(a)
        except Exception:  # an architecture function that needs more than an empty namespace: not a candidate
            continue
        built = {"embed_dim": getattr(a, "encoder_embed_dim", None),
                 "encoder_layers": getattr(a, "encoder_layers", None)}
        if "decoder_layers" in want:
            built["decoder_layers"] = getattr(a, "decoder_layers", None)
        if built == want:
            return name
    return None


def other_size(sd: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor], args, source: str) -> Optional[str]:
    """The line to refuse `sd` (a base checkpoint's model) with when it was built at other sizes than
    `own` (the model's), else None."""
    base, ours = sizes(sd), sizes(own)
    if any(getattr(args, f, None) for f in ("encoder_layers_to_keep", "decoder_layers_to_keep")):
        base = {k: v for k, v in base.items() if not k.endswith("_layers")}  # fairseq prunes the layers itself
        ours = {k: v for k, v in ours.items() if not k.endswith("_layers")}
    if not base or base == ours:
        return None
    arch = getattr(args, "arch", None) or "this architecture"
    sibling = _arch_of_size(arch, base) if getattr(args, "arch", None) else None
    if sibling:
        fix = f"use --arch {sibling}, the preset of the base's size"
    else:
        flags = []
        if "embed_dim" in base:
            flags.append(f"--encoder-embed-dim {base['embed_dim']}")
            if "decoder_layers" in base:
                flags.append(f"--decoder-embed-dim {base['embed_dim']}")
        flags += [f"--{k.replace('_', '-')} {v}" for k, v in base.items() if k.endswith("_layers")]
        fix = f"give the base's sizes: {' '.join(flags)} (and its FFN and attention-head sizes)"
    return (f"the base {source} has {_describe(base, keys=True)}; --arch {arch} builds "
            f"{_describe(ours)}: {fix}")
