"""Pure-Python reference ROUGE on token-id sequences.

This module is the specification that the Cython implementation (``rouge_fast.pyx``) must
match float for float; ``unifairseq.metrics.rouge`` falls back to it when the extension is
not compiled. Scores are computed exactly as Google's ``rouge-score`` package computes them
on already-tokenized text (no stemming, no lower-casing: a token is its integer id):

* ROUGE-N (``"rouge1"``, ``"rouge2"``, ...): the n-grams of each side are counted as a
  multiset; the overlap is the clipped count ``sum(min(count_hyp[g], count_ref[g]))``;
  ``precision = overlap / max(#hyp n-grams, 1)``, ``recall = overlap / max(#ref n-grams, 1)``.
  A side shorter than ``n`` has no n-grams, so every score is 0.
* ROUGE-L (``"rougeL"``): ``L = len(LCS(hyp, ref))`` (longest common subsequence, not
  necessarily contiguous); ``precision = L / len(hyp)``, ``recall = L / len(ref)``; all
  scores are 0 if either side is empty.
* F-measure (beta = 1): ``2 * p * r / (p + r)``, or 0 when ``p + r == 0``.

Argument order is ``(hyp, ref)`` everywhere (rouge-score's ``score(target, prediction)``
takes the reference first). Sequences are lists/tuples of ints or 1-d integer numpy arrays
(or anything iterable over ints, e.g. a CPU torch tensor).

Corpus aggregate: :func:`corpus_rouge` returns, per ROUGE type, the arithmetic mean of the
per-pair precision, recall and F-measure (the usual way rouge-score results are averaged,
e.g. ``np.mean([s["rouge2"].fmeasure for s in scores])``). The mean is a plain left-to-right
sum divided by the number of pairs, so both implementations round identically (numpy's
pairwise summation can differ from it in the last bit).
"""
import re
from collections import Counter, namedtuple

__all__ = ["Score", "ROUGE_TYPES", "fmeasure", "ngram_counts", "lcs_length", "rouge_n",
           "rouge_l", "sentence_rouge", "pairwise_rouge", "corpus_rouge", "parse_rouge_type"]

#: One ROUGE result, field-compatible with ``rouge_score.scoring.Score``.
Score = namedtuple("Score", ["precision", "recall", "fmeasure"])

#: The default ROUGE types of :func:`corpus_rouge` and friends.
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_ZERO = Score(0.0, 0.0, 0.0)
_TYPE_RE = re.compile(r"rouge(\d+|L)$")


def parse_rouge_type(rouge_type):
    """Map ``"rougeN"`` to ``N`` (an int >= 1) and ``"rougeL"`` to ``0``.

    Raises ValueError for anything else (``"rougeLsum"`` is not supported: it needs
    sentence boundaries, which token-id sequences do not carry).
    """
    m = _TYPE_RE.match(str(rouge_type))
    if m is None:
        raise ValueError(f"invalid ROUGE type {rouge_type!r}: expected 'rougeL' or 'rougeN' with N >= 1")
    if m.group(1) == "L":
        return 0
    n = int(m.group(1))
    if n < 1:
        raise ValueError(f"invalid ROUGE type {rouge_type!r}: n must be >= 1")
    return n


def fmeasure(precision, recall):
    """Balanced F-measure (beta = 1), written exactly as rouge-score writes it."""
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _ids(seq):
    """A list of Python ints from a list/tuple/array/tensor of token ids."""
    if hasattr(seq, "tolist"):  # numpy array or torch tensor: one C-level conversion
        seq = seq.tolist()
    if not isinstance(seq, list):
        seq = list(seq)
    return seq


def ngram_counts(tokens, n):
    """Counter mapping each n-gram (a tuple of ``n`` ids) of ``tokens`` to its count."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = _ids(tokens)
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(hyp, ref, n=1):
    """ROUGE-N of one hypothesis against one reference, as a :class:`Score`.

    >>> rouge_n([1, 2, 3, 2], [2, 2, 4], 1)   # overlap: min(2, 2) for token 2 -> 2
    Score(precision=0.5, recall=0.6666666666666666, fmeasure=0.5714285714285715)
    """
    hyp_counts = ngram_counts(hyp, n)
    ref_counts = ngram_counts(ref, n)
    overlap = sum(min(c, hyp_counts[g]) for g, c in ref_counts.items())
    precision = overlap / max(sum(hyp_counts.values()), 1)
    recall = overlap / max(sum(ref_counts.values()), 1)
    return Score(precision, recall, fmeasure(precision, recall))


def lcs_length(a, b):
    """Length of the longest common subsequence of ``a`` and ``b``.

    The textbook dynamic program ``T[i][j] = T[i-1][j-1] + 1`` if ``a[i-1] == b[j-1]``
    else ``max(T[i-1][j], T[i][j-1])``, keeping only two rows of the table.
    """
    a, b = _ids(a), _ids(b)
    if len(b) > len(a):  # rows as short as possible; LCS is symmetric
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
            else:
                cur[j] = max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(hyp, ref):
    """ROUGE-L (sentence-level, LCS based) of one hypothesis against one reference."""
    hyp, ref = _ids(hyp), _ids(ref)
    if not hyp or not ref:
        return _ZERO
    lcs = lcs_length(hyp, ref)
    precision = lcs / len(hyp)
    recall = lcs / len(ref)
    return Score(precision, recall, fmeasure(precision, recall))


def sentence_rouge(hyp, ref, rouge_types=ROUGE_TYPES):
    """``{rouge_type: Score}`` for one pair (like ``RougeScorer.score(ref, hyp)``)."""
    hyp, ref = _ids(hyp), _ids(ref)
    out = {}
    for t in rouge_types:
        n = parse_rouge_type(t)
        out[t] = rouge_l(hyp, ref) if n == 0 else rouge_n(hyp, ref, n)
    return out


def _check_corpus(hyps, refs):
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")


def pairwise_rouge(hyps, refs, rouge_types=ROUGE_TYPES):
    """``{rouge_type: [Score per pair]}`` for parallel lists of hypotheses and references."""
    _check_corpus(hyps, refs)
    kinds = [(t, parse_rouge_type(t)) for t in rouge_types]
    out = {t: [] for t, _ in kinds}
    for hyp, ref in zip(hyps, refs):
        hyp, ref = _ids(hyp), _ids(ref)
        for t, n in kinds:
            out[t].append(rouge_l(hyp, ref) if n == 0 else rouge_n(hyp, ref, n))
    return out


def corpus_rouge(hyps, refs, rouge_types=ROUGE_TYPES):
    """``{rouge_type: Score}`` holding the mean per-pair precision, recall and F-measure.

    Raises ValueError on an empty corpus or when the two sides differ in length.
    """
    _check_corpus(hyps, refs)
    if len(hyps) == 0:
        raise ValueError("corpus_rouge needs at least one hypothesis/reference pair")
    out = {}
    for t, scores in pairwise_rouge(hyps, refs, rouge_types).items():
        p = r = f = 0.0
        for s in scores:  # explicit left-to-right sums (see the module docstring)
            p += s.precision
            r += s.recall
            f += s.fmeasure
        out[t] = Score(p / len(scores), r / len(scores), f / len(scores))
    return out
