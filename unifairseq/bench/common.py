"""What the driver and the workers share: the rows, the shapes, the malloc settings, the targets."""
from __future__ import annotations

import argparse
import sys
from typing import Dict

BASELINES = ("full", "frozen", "frozen_2d")
EXTRA = ("none",)
DEFAULT_METHODS = ("mam", "prefix", "lora_attn", "lora_ffn", "pfeiffer", "houlsby", "pa_ffn", "scaled_pa",
                   "mhpa", "bitfit", "prompt")
# --tiny: 2 layers, dim 64 (positions stay at 1024 so that prompt tuning's 200 vectors fit)
TINY_DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
             "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
             "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]
TINY_VOCAB = 1000
# --malloc retain: glibc keeps freed memory mapped and reuses it (mmap only above 32 MiB, its maximum;
# no trimming) instead of returning it to the kernel and faulting it in again on the next step. Fresh
# pages cost ~2 us each on this project's VM (29 MB: 15 ms), and every step of a method that trains
# something allocates its gradients and the activations its weight gradients need anew; the frozen
# floor allocates neither. Any fairseq-train run on CPU can set the same variables.
RETAIN_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2 ** 30),
                 "MALLOC_TOP_PAD_": str(64 * 2 ** 20)}

TARGETS = {"mam_train_vs_frozen": 1.15, "mam_decode_vs_base": 1.15, "lora_merged_decode_vs_base": 1.02}
MIN_ROUNDS_FOR_TARGETS = 3  # fewer rounds (outside --tiny): the targets are shown but not judged


def malloc_env(o: argparse.Namespace) -> Dict[str, str]:
    """The environment variables --malloc adds for the worker processes (CPU only)."""
    return RETAIN_MALLOC if o.malloc == "retain" and o.device == "cpu" else {}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def arch_for(method: str, size: str) -> str:
    if method in BASELINES:
        return f"bart_{size}"
    if method == "none":
        return f"lora_attn_bart_{size}"  # merged and frozen: unifairseq's attention, no delta computation
    return f"{method}_bart_{size}"
