"""A tiny serving setup for the load test: a plain BART base of small shapes (tools/tiny_base.build, the one
factory of tiny bases), its dictionaries, and N delta checkpoints of every method kind on that base,
their parameters moved off their initialisation (random, not trained: the load test measures serving,
and checks each answer against the same delta decoded alone)."""
from __future__ import annotations

import os
from typing import Dict, List

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary

import unifairseq.fairseq.models  # noqa: F401  (registers the delta architectures build() names)
from unifairseq.tools.tiny_base import build, checkpoint_state

# one of each kind a mixed batch must serve: LoRA, MAM, a sequential adapter, prefixes, BitFit, (IA)^3
PRESETS = ("lora_attn", "mam", "pfeiffer", "prefix", "bitfit", "ia3")
SHAPES = dict(layers=2, dim=64, ffn_dim=128, heads=4)
WORDS = 200


def make(root: str, n_deltas: int, shapes: Dict[str, int] = SHAPES, words: int = WORDS) -> Dict[str, object]:
    """ROOT/data (dict.src.txt, dict.tgt.txt), ROOT/bases/tiny.bart/model.pt, ROOT/deltas/dK.pt for K < n."""
    data, deltas = os.path.join(root, "data"), os.path.join(root, "deltas")
    base = os.path.join(root, "bases", "tiny.bart", "model.pt")
    for folder in (data, deltas, os.path.dirname(base)):
        os.makedirs(folder, exist_ok=True)
    d = Dictionary()
    for i in range(words):
        d.add_symbol(f"w{i}")
    d.pad_to_multiple_(8)
    for lang in ("src", "tgt"):
        d.save(os.path.join(data, f"dict.{lang}.txt"))
    kw = dict(shapes, source_lang="src", target_lang="tgt")
    plain, args = build("bart", data, **kw)
    checkpoint_utils.torch_persistent_save(checkpoint_state(plain, args), base)
    names: List[str] = []
    for i in range(n_deltas):
        model, margs = build("bart", data, arch=f"{PRESETS[i % len(PRESETS)]}_bart_large", seed=i + 1, **kw)
        model.load_base(base)
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        names.append(f"d{i}")
        checkpoint_utils.torch_persistent_save(checkpoint_state(model, margs), os.path.join(deltas, f"d{i}.pt"))
    return dict(base=base, data=data, deltas=deltas, names=names, words=words, shapes=dict(shapes),
                presets=[PRESETS[i % len(PRESETS)] for i in range(n_deltas)])
