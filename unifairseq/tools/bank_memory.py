"""Memory of a delta bank as it grows: bytes of the bank's parameters and the process's resident
memory after each added delta, against the sum of the deltas' own sizes.

    python -m unifairseq.tools.bank_memory [--arch bank_bart_base] [--deltas lora_attn,pfeiffer,mam] [--n 8]

Deltas are fresh presets on the architecture's real shapes (a 50,264-symbol dictionary, as bart.base),
cycled through --deltas; "own size" is what that delta's single-delta checkpoint stores (its trained
tensors), measured on a single-delta model `<preset>_<family>_<size>` built on its own. Resident
growth can stay below the bytes while pages that were only zero-filled are untouched.
"""
from __future__ import annotations

import argparse
import gc
import os
from typing import Optional, Sequence

from unifairseq.tools.count import build_translation_model


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="unifairseq-bank-memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="bank_bart_base")
    ap.add_argument("--deltas", default="lora_attn,pfeiffer,mam")
    ap.add_argument("--n", type=int, default=8)
    a = ap.parse_args(argv)

    # after parse_args: torch and fairseq, which --help does not need
    import torch

    from unifairseq.fairseq import register
    from unifairseq.fairseq.bank import preset_config

    register()
    torch.set_grad_enabled(False)
    model, _, _ = build_translation_model(a.arch)
    presets = a.deltas.split(",")
    own_size = {}
    for name in presets:  # the single-delta model's trained tensors, without the bank
        single, _, _ = build_translation_model(a.arch.replace("bank_", name + "_"))
        own_size[name] = sum(p.numel() * p.element_size() for p in single.parameters() if p.requires_grad)
        del single
    base = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    rss0 = rss_bytes()
    print(f"base {a.arch}: {base:,} parameter bytes, resident {rss0:,} bytes")
    print("| N | added | its own size (bytes, single-delta model) | in the bank | sum of own sizes | "
          "bank parameter bytes | resident growth |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    total = 0
    for i in range(a.n):
        name = presets[i % len(presets)]
        model.bank.add(f"d{i}", preset_config(name))
        total += own_size[name]
        gc.collect()
        print(f"| {i + 1} | {name} | {own_size[name]:,} | {model.bank.nbytes(f'd{i}'):,} | {total:,} | "
              f"{model.bank.nbytes():,} | {rss_bytes() - rss0:,} |")
    # one mixed batch through the whole bank: what inference adds (stacked copies, stack_cache=True)
    src = torch.randint(4, 1000, (a.n, 12))
    model.eval()
    model(src, torch.full((a.n,), 12), src[:, :6], delta_ids=torch.arange(a.n))
    print(f"after a mixed forward of {a.n} sentences (one per delta): stacked inference copies "
          f"{model.bank.cache_bytes():,} bytes (model.bank.stack_cache = False: none, stacked per call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
