"""Benchmark: pure-Python vs Cython ROUGE on token ids.

    python -m unifairseq.metrics.bench [--pairs 1000] [--long-pairs 50] [--repeat 3]

Text comes from the XSum test split under ``$UNIFAIRSEQ_DATA`` (default ``<repo>/../shared/data``;
``xsum/test.target`` and ``xsum/test.source``, read in place), whitespace-tokenized and mapped to
ids with a vocabulary built on the fly. Workloads:

* short: each summary (~22 ids) against the first 60 ids of its article, ``--pairs`` pairs;
* long: ``--long-pairs`` pairs of 500-id article prefixes (article i against article i+1),
  where ROUGE-L's quadratic LCS dominates.

Without the data a synthetic Zipf-distributed corpus of the same shape is used (with a note).
Both implementations get the same Python lists of ints and must return identical scores; each
timing is the best of ``--repeat`` runs of ``corpus_rouge`` for one ROUGE type.
"""
import os
import random
import re
import sys
import time
from pathlib import Path
from unifairseq import cli
from unifairseq.metrics import rouge_ref

_REPO = Path(__file__).resolve().parents[2]


def data_dir():
    """``$UNIFAIRSEQ_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("UNIFAIRSEQ_DATA") or _REPO.parent / "shared" / "data")


def read_xsum(split="test"):
    """(sources, targets) as lists of lines, or None when the files are missing."""
    d = data_dir() / "xsum"
    src, tgt = d / f"{split}.source", d / f"{split}.target"
    if not (src.is_file() and tgt.is_file()):
        return None
    with open(src, encoding="utf-8") as f:
        sources = f.read().splitlines()
    with open(tgt, encoding="utf-8") as f:
        targets = f.read().splitlines()
    if len(sources) != len(targets):
        raise ValueError(f"{src} has {len(sources)} lines but {tgt} has {len(targets)}")
    return sources, targets


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentence(text):
    """The text up to the first '.', '!' or '?' followed by whitespace (or all of it)."""
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


class Vocab:
    """Whitespace tokens -> consecutive integer ids, assigned on first sight."""

    def __init__(self):
        self.ids = {}

    def encode(self, text):
        ids = self.ids
        return [ids.setdefault(tok, len(ids)) for tok in text.split()]


def _xsum_workloads(pairs, long_pairs, long_len=500):
    data = read_xsum()
    if data is None:
        return None
    sources, targets = data
    vocab = Vocab()
    n = min(pairs, len(targets))
    hyps = [vocab.encode(t) for t in targets[:n]]
    refs = [vocab.encode(s)[:60] for s in sources[:n]]
    docs = [ids[:long_len] for ids in map(vocab.encode, sources) if len(ids) >= long_len]
    docs = (docs * (long_pairs // max(len(docs), 1) + 2))[:long_pairs + 1]
    desc = f"XSum test from {data_dir()} (vocab {len(vocab.ids)})"
    return desc, (hyps, refs), (docs[:-1], docs[1:])


def _synthetic_workloads(pairs, long_pairs, long_len=500, vocab=30000, seed=0):
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) for r in range(vocab)]  # Zipf-like

    def seq(length):
        return rng.choices(range(vocab), weights, k=max(length, 1))

    hyps = [seq(int(rng.gauss(25, 6))) for _ in range(pairs)]
    refs = [seq(int(rng.gauss(60, 10))) for _ in range(pairs)]
    docs = [seq(long_len) for _ in range(long_pairs + 1)]
    return "synthetic Zipf ids", (hyps, refs), (docs[:-1], docs[1:])


def _best(fn, repeat, min_time=0.2):
    """Best wall time of one call of fn, over `repeat` rounds of enough calls to take min_time."""
    t0 = time.perf_counter()
    result = fn()
    once = time.perf_counter() - t0
    number = max(1, int(min_time / max(once, 1e-9)))
    best = once
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best, result


def main(argv=None):
    ap = cli.parser("unifairseq-bench-rouge", __doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--long-pairs", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    try:
        from . import rouge_fast  # the compiled extension: may be missing, said below
    except ImportError as e:
        sys.exit(f"rouge_fast is not compiled ({e}); build it with: "
                 "pip install --no-deps --no-build-isolation -e .")

    work = _xsum_workloads(args.pairs, args.long_pairs)
    if work is None:
        print(f"note: XSum files not found under {data_dir() / 'xsum'}; using synthetic ids")
        work = _synthetic_workloads(args.pairs, args.long_pairs)
    desc, short, long = work

    def mean_len(seqs):
        return sum(map(len, seqs)) / max(len(seqs), 1)

    print(f"data: {desc}")
    rows = []
    for name, (hyps, refs) in (("short", short), ("long", long)):
        label = f"{name} {len(hyps)}x ({mean_len(hyps):.0f} vs {mean_len(refs):.0f} ids)"
        for rouge_type in ("rouge1", "rouge2", "rougeL"):
            t_py, r_py = _best(lambda: rouge_ref.corpus_rouge(hyps, refs, [rouge_type]), args.repeat,
                               min_time=0.0)
            t_cy, r_cy = _best(lambda: rouge_fast.corpus_rouge(hyps, refs, [rouge_type]), args.repeat)
            if r_py != r_cy:
                sys.exit(f"MISMATCH on {label} {rouge_type}: {r_py} != {r_cy}")
            rows.append((label, rouge_type, t_py, t_cy, r_cy[rouge_type].fmeasure))

    print(f"{'workload':<32} {'metric':<7} {'python ms':>10} {'cython ms':>10} {'speedup':>8} {'mean F1':>8}")
    for label, rouge_type, t_py, t_cy, f1 in rows:
        print(f"{label:<32} {rouge_type:<7} {t_py * 1e3:>10.2f} {t_cy * 1e3:>10.3f} "
              f"{t_py / t_cy:>7.0f}x {f1:>8.4f}")
    worst = min(t_py / t_cy for _, _, t_py, t_cy, _ in rows)
    print(f"identical scores: yes; smallest speedup {worst:.0f}x (target >= 20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
