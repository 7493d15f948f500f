"""Binarized data as fairseq-preprocess writes it."""
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
