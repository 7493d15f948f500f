"""GLUE SST-2 for the demo: finding it, reading it (the shared GLUE TSV reader), tokenizing and
binarizing it with fairseq-preprocess for --task sentence_prediction."""
from __future__ import annotations

import os
import random
from typing import List, Optional, Tuple

from ..convert.hf_tokenize import HFTokenizer
from ..data.tsv import TsvError, read_glue_tsv, resolve_data_root
from .common import DemoError, run_logged, tail, tool

SST2_REL = os.path.join("glue", "SST-2")
MISSING_DATA_HELP = """\
GLUE SST-2 not found: expected {train} and {dev}
(tab-separated, header line `sentence<TAB>label`, labels 0/1; 67,349 train and 872 dev sentences).

Get SST-2 from the GLUE benchmark: https://gluebenchmark.com/tasks ("SST-2", SST-2.zip), or with
download_glue_data.py --tasks SST from https://github.com/nyu-mll/GLUE-baselines.
Unpack it so that DIR/glue/SST-2/train.tsv and DIR/glue/SST-2/dev.tsv exist, then point the demo at DIR:

    UNIFAIRSEQ_DATA=DIR unifairseq-demo        (or: unifairseq-demo --data DIR)

--data also accepts the SST-2 folder itself. The files are read in place, never copied.
Data root searched now: {root} ({why})."""


def find_sst2(data: Optional[str]) -> Tuple[str, str]:
    """(train.tsv, dev.tsv) under --data / $UNIFAIRSEQ_DATA / <repo>/../shared/data."""
    root, why = resolve_data_root(data)
    root = os.path.abspath(root)
    for d in (os.path.join(root, SST2_REL), root):
        train, dev = os.path.join(d, "train.tsv"), os.path.join(d, "dev.tsv")
        if os.path.isfile(train) and os.path.isfile(dev):
            return train, dev
    d = os.path.join(root, SST2_REL)
    raise DemoError(MISSING_DATA_HELP.format(train=os.path.join(d, "train.tsv"), dev=os.path.join(d, "dev.tsv"),
                                             root=root, why=why))


def read_sst2_tsv(path: str) -> List[Tuple[str, str]]:
    """[(sentence, label)] from a GLUE SST-2 tsv (header `sentence<TAB>label`, labels 0/1)."""
    try:
        return read_glue_tsv(path, ("sentence",), ("label",), labels=("0", "1")).rows
    except TsvError as e:
        raise DemoError(str(e)) from None


def majority(rows: List[Tuple[str, str]]) -> float:
    """The accuracy of always answering the most frequent label."""
    labels = [y for _, y in rows]
    return max(labels.count(c) for c in set(labels)) / len(labels)


def stage_data(workdir: str, imported: dict, train: list, dev: list, n_train: int, seed: int) -> dict:
    n_total = len(train)
    if n_train < len(train):
        train = random.Random(seed).sample(train, n_train)
    tok = HFTokenizer(imported["src"], imported["dict"])
    raw = os.path.join(workdir, "raw")
    os.makedirs(raw, exist_ok=True)
    lengths = {}
    for split, rows in (("train", train), ("valid", dev)):
        lines = tok.encode_lines([s for s, _ in rows])
        lengths[split] = max(len(x.split()) for x in lines) + 2  # + <s> (--init-token) and </s>
        with open(os.path.join(raw, f"{split}.input0"), "w", encoding="utf-8") as f:
            f.writelines(x + "\n" for x in lines)
        with open(os.path.join(raw, f"{split}.label"), "w", encoding="utf-8") as f:
            f.writelines(y + "\n" for _, y in rows)
    bin_dir = os.path.join(workdir, "data-bin")
    pre = tool("fairseq-preprocess")
    for what, extra in (("input0", ["--srcdict", imported["dict"]]), ("label", [])):
        log = os.path.join(workdir, "logs", f"preprocess_{what}.log")
        rc = run_logged([pre, "--only-source", "--trainpref", os.path.join(raw, f"train.{what}"),
                         "--validpref", os.path.join(raw, f"valid.{what}"),
                         "--destdir", os.path.join(bin_dir, what), "--workers", "1", *extra], log)
        if rc != 0:
            raise DemoError(f"fairseq-preprocess ({what}) failed:\n{tail(log)}\n(log: {log})")
    return dict(bin=bin_dir, n_train=len(train), n_train_total=n_total, n_dev=len(dev), max_len=lengths,
                dev_majority=majority(dev))
