"""Data for the tests: binarized splits as fairseq-preprocess writes them, raw synthetic copy-task text."""
import random
from pathlib import Path

import numpy as np
import torch
from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder


def write_split(prefix: Path, lengths, vocab: int = 20) -> None:
    """A binarized split as fairseq-preprocess writes it (dataset-impl mmap, uint16 tokens)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    b = MMapIndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for n in lengths:
        b.add_item(torch.randint(4, vocab, (n,)))
    b.finalize(str(prefix) + ".idx")


def write_copy_task(raw: Path, sizes: dict, seed: int = 0) -> None:
    """RAW/{split}.src and .tgt for {split: number of lines}: the same random lines of 3-8 words of a 30-word
    vocabulary on both sides (a copy task), drawn in the order of `sizes` from one seeded generator."""
    rng = random.Random(seed)
    for split, n in sizes.items():
        lines = [" ".join(f"w{rng.randrange(30)}" for _ in range(rng.randrange(3, 9))) for _ in range(n)]
        for lang in ("src", "tgt"):
            (raw / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
