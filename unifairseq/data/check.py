"""Check binarized fairseq data before a run, so that bad input gets one clear message.

fairseq finds these problems late or not at all: a missing split is an assertion or a
FileNotFoundError deep in `load_dataset`; a truncated index is an assertion about
`--dataset-impl`; an empty split crashes in `np.memmap` ("cannot mmap an empty file");
training examples longer than the model's positions are dropped with a warning only.
The train_*/eval_* scripts call this first (unifairseq-datacheck), and the tasks in
`unifairseq.fairseq.tasks` call it from `load_dataset`.

    unifairseq-datacheck DATA_BIN --layout translation --langs source target \
        --splits train,valid --max-positions 1024 1024 [--truncate-source]
    unifairseq-datacheck DATA_BIN --layout sentence_prediction --splits train,valid --max-positions 512

Exit status 0 when the data is usable, 2 with a message naming the file, the problem and the fix.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from unifairseq import cli
from unifairseq.errors import UnifairseqError

# fairseq's MMapIndexedDataset.Index format (what fairseq-preprocess writes, dataset-impl mmap), read
# without importing fairseq so the scripts can check data with any Python; tests/test_datacheck.py
# checks these against fairseq's own constants.
MMAP_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = len(MMAP_MAGIC) + 8 + 1 + 8  # magic, version <Q, dtype code <B, count <Q
_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 8, 8: 2, 9: 4, 10: 8}  # dtype code -> bytes per token


logger = logging.getLogger(__name__)


class DataError(UnifairseqError, ValueError):
    """Bad or missing data: the message names the file, the problem and the fix."""


@dataclass
class Split:
    prefix: str        # path without .idx/.bin
    sizes: np.ndarray  # tokens per example

    def __len__(self) -> int:
        return len(self.sizes)


def read_split(prefix: str, fix: str) -> Split:
    """Read the index of one binarized split (fairseq-preprocess output, dataset-impl mmap) and
    check it against its .bin file. `fix` says how to (re)make the data."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    missing = [p for p in (idx, bin_) if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{' and '.join(missing)} not found: {fix}")
    with open(idx, "rb") as f:
        head = f.read(_HEADER)
        if head[:len(MMAP_MAGIC)] != MMAP_MAGIC:
            raise DataError(f"{idx} is not a fairseq index (dataset-impl mmap): it does not start with "
                            f"{MMAP_MAGIC!r}. Re-binarize with fairseq-preprocess ({fix})")
        if len(head) < _HEADER:
            raise DataError(f"{idx} is truncated ({len(head)} bytes, the header alone is {_HEADER}): {fix}")
        (version,), (code,), (n,) = (struct.unpack("<Q", head[9:17]), struct.unpack("<B", head[17:18]),
                                     struct.unpack("<Q", head[18:26]))
        if version != 1 or code not in _ITEMSIZE:
            raise DataError(f"{idx}: unknown index version {version} / dtype code {code}: {fix}")
        body = f.read()
    if len(body) < n * (4 + 8):
        raise DataError(f"{idx} is truncated: it announces {n:,} examples but holds only {len(body):,} "
                        f"bytes of sizes and offsets: {fix}")
    if n == 0:
        raise DataError(f"{prefix} is an empty dataset (0 examples): the text it was binarized from was "
                        f"empty; {fix}")
    sizes = np.frombuffer(body, dtype=np.int32, count=n)
    expected = int(sizes.astype(np.int64).sum()) * _ITEMSIZE[code]
    actual = os.path.getsize(bin_)
    if actual != expected:
        raise DataError(f"{bin_} has {actual:,} bytes but its index {idx} describes {expected:,}: the pair "
                        f"is from different runs or was cut short: {fix}")
    return Split(prefix, sizes)


def _too_long(split: Split, what: str, limit: int, extra: int, flag: str) -> None:
    lengths = split.sizes.astype(np.int64) + extra
    over = np.flatnonzero(lengths > limit)
    if len(over):
        raise DataError(
            f"{split.prefix}: {len(over):,} of {len(split):,} examples are longer than the model's {limit} "
            f"{what} positions (longest {int(lengths.max())} tokens, first example ids "
            f"{', '.join(map(str, over[:5]))}). fairseq would silently drop them in training and stop "
            f"on them in evaluation. Fix: {flag}")


def check_translation(data: str, src: str, tgt: str, splits: Sequence[str],
                      max_positions: Optional[Sequence[int]] = None, truncate_source: bool = False,
                      src_extra: int = 0, fix: str = "run fairseq-preprocess (or scripts/preprocess_*.sh) again",
                      warn_too_long: bool = False) -> dict:
    """Splits `{data}/{split}.{src}-{tgt}.{lang}` for both languages: present, well formed, non-empty,
    aligned, and within max_positions (source, target); `src_extra` tokens are added by the task
    (e.g. mBART's language token). `warn_too_long` logs over-long examples instead of refusing them
    (fairseq then drops them from training; `--skip-invalid-size-inputs-valid-test` in evaluation)."""
    if not os.path.isdir(data):
        raise DataError(f"data directory {data} does not exist: {fix}")
    out = {}
    for split in splits:
        # fairseq reads {split}.{src}-{tgt}.* and falls back to the reversed pair name
        pair = f"{src}-{tgt}"
        if not os.path.exists(os.path.join(data, f"{split}.{pair}.{src}.idx")) and \
                os.path.exists(os.path.join(data, f"{split}.{tgt}-{src}.{src}.idx")):
            pair = f"{tgt}-{src}"
        s = read_split(os.path.join(data, f"{split}.{pair}.{src}"), fix)
        t = read_split(os.path.join(data, f"{split}.{pair}.{tgt}"), fix)
        if len(s) != len(t):
            raise DataError(f"{split}: {len(s):,} {src} examples but {len(t):,} {tgt} examples in {data}: "
                            f"the two sides must be binarized from aligned files; {fix}")
        if max_positions:
            try:
                if not truncate_source:
                    _too_long(s, "source", max_positions[0], src_extra,
                              "pass --truncate-source (summarization), or filter/shorten the source text")
                _too_long(t, "target", max_positions[1], 0, "filter or shorten the target text")
            except DataError as e:
                if not warn_too_long:
                    raise
                logger.warning(str(e))
        out[split] = len(s)
    return out


def check_task_split(cfg, split: str, epoch: int = 1, src_extra: int = 0) -> None:
    """From a translation-style task's load_dataset: the split fairseq is about to read (the same
    shard choice as fairseq's TranslationTask), with over-long examples logged, not refused."""
    paths = [p for p in cfg.data.split(os.pathsep) if p]
    data = paths[(epoch - 1) % len(paths)]
    max_pos = (cfg.max_source_positions, cfg.max_target_positions)
    check_translation(data, cfg.source_lang, cfg.target_lang, [split], max_pos,
                      getattr(cfg, "truncate_source", False), src_extra, warn_too_long=True)


def check_sentence_prediction(data: str, splits: Sequence[str], max_positions: Optional[int] = None,
                              fix: str = "run scripts/preprocess_glue.sh (or fairseq-preprocess) again") -> dict:
    """GLUE layout `{data}/input0/{split}` [+ input1] + label: fairseq's sentence_prediction task
    prepends <s> to input0 and a separator to input1."""
    if not os.path.isdir(data):
        raise DataError(f"data directory {data} does not exist: {fix}")
    out = {}
    for split in splits:
        x0 = read_split(os.path.join(data, "input0", split), fix)
        pair = os.path.exists(os.path.join(data, "input1", split + ".idx"))
        x1 = read_split(os.path.join(data, "input1", split), fix) if pair else None
        y_prefix = os.path.join(data, "label", split)
        y = read_split(y_prefix, fix) if os.path.exists(y_prefix + ".idx") else None
        for other, name in ((x1, "input1"), (y, "label")):
            if other is not None and len(other) != len(x0):
                raise DataError(f"{split}: {len(x0):,} input0 examples but {len(other):,} {name} rows in {data}; {fix}")
        if max_positions:
            lengths = x0.sizes.astype(np.int64) + 1 + (x1.sizes.astype(np.int64) + 1 if x1 is not None else 0)
            _too_long(Split(x0.prefix, lengths), "", max_positions, 0,
                      "pass --shorten-method truncate to fairseq-train, or shorten the text")
        out[split] = len(x0)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = cli.parser("unifairseq-datacheck", __doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--layout", choices=("translation", "sentence_prediction"), required=True)
    ap.add_argument("--langs", nargs=2, metavar=("SRC", "TGT"))
    ap.add_argument("--splits", default="train,valid")
    ap.add_argument("--max-positions", type=int, nargs="+")
    ap.add_argument("--truncate-source", action="store_true")
    ap.add_argument("--src-extra", type=int, default=0, help="tokens the task adds to each source")
    ap.add_argument("--fix", help="how to make the data (for the messages)")
    a = ap.parse_args(argv)
    splits = [s for s in a.splits.split(",") if s]
    kw = {"fix": a.fix} if a.fix else {}
    try:
        if a.layout == "translation":
            if not a.langs:
                ap.error("--layout translation needs --langs SRC TGT")
            mp = a.max_positions
            if mp and len(mp) == 1:
                mp = mp * 2
            counts = check_translation(a.data, *a.langs, splits, mp, a.truncate_source, a.src_extra, **kw)
        else:
            counts = check_sentence_prediction(a.data, splits, a.max_positions[0] if a.max_positions else None, **kw)
    except DataError as e:
        return cli.error("unifairseq-datacheck", e)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
