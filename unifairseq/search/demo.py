"""`unifairseq-search --demo`: the paper's walk on SST-2 with the real all-MiniLM-L6-v2 weights, on a CPU.

The inputs are the ones `scripts/demo.sh` makes (unifairseq/demo: the packaged MiniLM imported into a
fairseq RoBERTa checkpoint, SST-2 read in place and tokenized with MiniLM's own WordPiece vocabulary),
laid out as `scripts/preprocess_glue.sh` lays out its output (DATA/bin/{input0,label}, DATA/meta.json),
so that every trial is a plain `scripts/train_glue.sh SST-2 delta --base MiniLM` run. They are made
once under OUT/demo_inputs; a rerun (to resume) reuses them when the sample is the same.

The grid is space.DEMO_GROUPS (sequential vs parallel, attention vs FFN, plain vs scaled, all with the
adapter's functional form) at DEMO_BUDGETS; each trial trains one epoch of DEMO_TRAIN sampled
sentences at DEMO_LR (a 200-update run needs a larger rate than the paper's 1e-4 over 10 epochs of
67k sentences) and is validated on the whole dev set (872 sentences).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional

from .errors import SearchError

DEMO_OUT = os.path.join("runs", "search_demo")
DEMO_TRAIN = 6400  # one epoch of 200 updates of 32
DEMO_BUDGETS = "0.1%,5%"
DEMO_LR = "2e-3"
DEMO_SPACE = "demo"


def _flags_without_arch(flags: List[str]) -> List[str]:
    """The importer's fairseq-train flags (--arch roberta_base --encoder-layers 6 ...) less --arch:
    train_glue.sh sets the delta arch, and these size it to MiniLM."""
    i = flags.index("--arch")
    return flags[:i] + flags[i + 2:]


def prepare(out: str, data_root: Optional[str], n_train: int, seed: int) -> dict:
    """OUT/demo_inputs/{minilm/model.pt, sst2/bin, sst2/meta.json}; returns data, base and the trials'
    extra fairseq-train flags. Made once per (sample size, seed, data files)."""
    # the demo's stages import transformers' tokenizer and the converter: only when --demo runs
    from unifairseq.demo.common import DemoError
    from unifairseq.demo.data import find_sst2, read_sst2_tsv, stage_data
    from unifairseq.demo.run import stage_import

    if n_train <= 0:
        raise SearchError(f"--train-examples {n_train}: give a positive number")
    work = os.path.join(out, "demo_inputs")
    record = os.path.join(work, "prepared.json")
    try:
        train_tsv, dev_tsv = find_sst2(data_root)
    except DemoError as e:  # the demo's own message is a page of help; a search error is one line
        raise SearchError(f"--demo: {str(e).splitlines()[0]}; give --data DIR, the data root that holds "
                          "glue/SST-2/{train,dev}.tsv (or set UNIFAIRSEQ_DATA)") from None
    want = dict(train_examples=n_train, seed=seed, train_file=os.path.abspath(train_tsv),
                valid_file=os.path.abspath(dev_tsv))
    try:
        with open(record, encoding="utf-8") as f:
            done = json.load(f)
        if all(done.get(k) == v for k, v in want.items()) and os.path.isfile(done["base"]):
            return done
    except (OSError, ValueError, KeyError):
        pass
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    imported = stage_import(work)
    train_rows, dev_rows = read_sst2_tsv(train_tsv), read_sst2_tsv(dev_tsv)
    data = stage_data(work, imported, train_rows, dev_rows, n_train, seed)
    sst2 = os.path.join(work, "sst2")
    os.makedirs(sst2, exist_ok=True)
    bin_dir = os.path.join(sst2, "bin")
    if os.path.isdir(bin_dir):
        shutil.rmtree(bin_dir)
    os.replace(data["bin"], bin_dir)  # preprocess_glue.sh's layout: DATA/bin/{input0,label}
    meta = dict(task="SST-2", num_classes=2, pair=False, train_examples=data["n_train"],
                valid_examples=data["n_dev"], train_file=want["train_file"], valid_file=want["valid_file"],
                tokenizer=imported["src"], dict=imported["dict"])
    with open(os.path.join(sst2, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    done = dict(want, data=sst2, base=imported["model"], model_flags=_flags_without_arch(imported["flags"]),
                dev_majority=data["dev_majority"])
    with open(record, "w", encoding="utf-8") as f:
        json.dump(done, f, indent=1)
    return done
