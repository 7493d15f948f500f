"""The data root and the GLUE TSV reader, shared by the demo, the pipeline and the benchmarks.

Standard library only (no torch, no fairseq): the scripts' data steps (unifairseq/data/prepare.py)
read GLUE with it in a Python that need not have either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple
from unifairseq.errors import UnifairseqError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_ENV = "UNIFAIRSEQ_DATA"


class TsvError(UnifairseqError, ValueError):
    """A missing or malformed TSV file; the message names the file (and line)."""


def resolve_data_root(explicit: Optional[str] = None) -> Tuple[str, str]:
    """(data root, where it came from): `explicit` (a --data flag), else $UNIFAIRSEQ_DATA, else
    <repo>/../shared/data."""
    if explicit:
        return explicit, "from --data"
    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV], f"from ${DATA_ENV}"
    return (os.path.normpath(os.path.join(REPO, "..", "shared", "data")),
            f"the default <repo>/../shared/data; set {DATA_ENV} or pass --data")


def default_data_root() -> str:
    """$UNIFAIRSEQ_DATA, else <repo>/../shared/data."""
    return resolve_data_root()[0]


@dataclass
class GlueTable:
    columns: List[str]                  # the header
    rows: List[Tuple[str, ...]]         # (text columns..., label), text whitespace-normalized
    skipped: int = 0                    # rows without a label or with missing columns (skip_unlabelled)


def read_glue_tsv(path: str, text_cols: Sequence[str], label_cols: Sequence[str] = ("label",),
                  labels: Optional[Sequence[str]] = None, skip_unlabelled: bool = False) -> GlueTable:
    """The rows of a GLUE TSV file: its header names the columns; `text_cols` must all be there and
    one of `label_cols` (the first present wins). Blank lines are ignored. A row with too few
    columns or an empty / `-` label is counted in `skipped` with `skip_unlabelled` (MNLI pairs
    without a gold label), else an error naming the line; with `labels`, any other label is an
    error too. No example at all is an error."""
    if not os.path.isfile(path):
        raise TsvError(f"{path} does not exist")
    want = f"`{'<TAB>'.join([*text_cols, '/'.join(label_cols)])}`"
    rows: List[Tuple[str, ...]] = []
    skipped = 0
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            header = f.readline().rstrip("\r\n").split("\t")
            cols = {name: i for i, name in enumerate(header)}
            label_col = next((c for c in label_cols if c in cols), None)
            missing = [c for c in text_cols if c not in cols] + ([] if label_col else ["/".join(label_cols)])
            if missing:
                raise TsvError(f"{path}: the header {header!r} lacks the column(s) {', '.join(missing)}: expected "
                               f"a GLUE header with {want}")
            idx = [cols[c] for c in text_cols] + [cols[label_col]]
            for n, line in enumerate(f, start=2):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                parts = line.split("\t")
                label = parts[idx[-1]].strip() if len(parts) > max(idx) else ""
                if label in ("", "-") and skip_unlabelled:
                    skipped += 1
                    continue
                if label in ("", "-") or (labels is not None and label not in labels):
                    expected = f"`{'<TAB>'.join([*text_cols, '|'.join(labels)])}`" if labels else want
                    raise TsvError(f"{path}:{n}: expected {expected}, got {line[:80]!r}")
                rows.append(tuple(" ".join(parts[i].split()) for i in idx[:-1]) + (label,))
    except UnicodeDecodeError as e:
        raise TsvError(f"{path} is not UTF-8 text ({e})") from None
    if not rows:
        raise TsvError(f"{path} holds no examples")
    return GlueTable(header, rows, skipped)
