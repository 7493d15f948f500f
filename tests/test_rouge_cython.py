"""ROUGE on token ids: Cython == pure-Python reference (bit for bit) == rouge-score (to 1e-9).

Real text: XSum test summaries as references, the first sentence of each article as the
"hypothesis", whitespace-tokenized and mapped to ids. rouge-score sees exactly the same
tokens through a whitespace tokenizer object. Skipped only when the data directory is missing.
"""
import importlib
import logging
import random
import sys

import numpy as np
import pytest

from unifairseq.metrics import rouge_ref as ref
from unifairseq.metrics.bench import Vocab, data_dir, first_sentence, read_xsum

try:
    from unifairseq.metrics import rouge_fast as fast
except ImportError as e:  # a failure, not a skip: the extension is part of the install
    fast = None
    _fast_error = str(e)

TYPES = ("rouge1", "rouge2", "rougeL")


@pytest.fixture(scope="module")
def fast_mod():
    if fast is None:
        pytest.fail(f"rouge_fast is not compiled ({_fast_error}); "
                    "build it with: pip install --no-deps --no-build-isolation -e .")
    return fast


@pytest.fixture(scope="module")
def xsum():
    data = read_xsum()
    if data is None:
        pytest.skip(f"XSum data not found under {data_dir() / 'xsum'} (set UNIFAIRSEQ_DATA)")
    sources, targets = data
    hyp_text = [first_sentence(s) for s in sources]
    vocab = Vocab()
    hyps = [vocab.encode(t) for t in hyp_text]
    refs = [vocab.encode(t) for t in targets]
    long_docs = [ids[:500] for ids in map(vocab.encode, sources[:60]) if len(ids) >= 500]
    return dict(hyp_text=hyp_text, ref_text=targets, hyps=hyps, refs=refs, long=long_docs)


class WhitespaceTokenizer:
    """rouge-score tokenizer that returns exactly our tokens."""

    def tokenize(self, text):
        return text.split()


def test_real_data_is_realistic(xsum):
    assert len(xsum["hyps"]) == 1000
    assert 15 < np.mean([len(h) for h in xsum["hyps"]]) < 60
    assert 15 < np.mean([len(r) for r in xsum["refs"]]) < 40
    assert len(xsum["long"]) >= 10


def test_cython_equals_reference_exactly_on_xsum(xsum, fast_mod):
    hyps, refs = xsum["hyps"], xsum["refs"]
    want = ref.pairwise_rouge(hyps, refs, TYPES)
    got = fast_mod.pairwise_rouge(hyps, refs, TYPES)
    for t in TYPES:
        assert len(got[t]) == len(hyps)
        bad = [i for i, (g, w) in enumerate(zip(got[t], want[t])) if g != w]
        assert not bad, f"{t}: {len(bad)} pairs differ, e.g. #{bad[0]}: {got[t][bad[0]]} != {want[t][bad[0]]}"
        assert all(type(x) is float for s in got[t][:5] for x in s)
    assert fast_mod.corpus_rouge(hyps, refs) == ref.corpus_rouge(hyps, refs)
    # one huge id makes n-grams (n >= 2) too wide to pack into 64 bits: the general hash path
    wide_h, wide_r = hyps[:200] + [[2**62, 5]], refs[:200] + [[2**62, 5]]
    assert fast_mod.pairwise_rouge(wide_h, wide_r, TYPES) == ref.pairwise_rouge(wide_h, wide_r, TYPES)
    # the single-pair API too, and the public module picks the compiled one
    for i in range(0, 1000, 97):
        assert fast_mod.sentence_rouge(hyps[i], refs[i]) == ref.sentence_rouge(hyps[i], refs[i])
        assert fast_mod.rouge_n(hyps[i], refs[i], 3) == ref.rouge_n(hyps[i], refs[i], 3)
    from unifairseq import metrics
    assert metrics.IMPLEMENTATION == "cython"
    assert metrics.corpus_rouge is fast_mod.corpus_rouge


def test_cython_equals_reference_on_long_documents(xsum, fast_mod):
    docs = xsum["long"][:11]
    hyps, refs = docs[:-1], docs[1:]
    for h, r in zip(hyps, refs):
        assert fast_mod.lcs_length(h, r) == ref.lcs_length(h, r) > 0
    assert fast_mod.pairwise_rouge(hyps, refs) == ref.pairwise_rouge(hyps, refs)


def test_reference_agrees_with_rouge_score(xsum):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=False, tokenizer=WhitespaceTokenizer())
    mine = ref.pairwise_rouge(xsum["hyps"], xsum["refs"], TYPES)
    theirs = [scorer.score(r, h) for h, r in zip(xsum["hyp_text"], xsum["ref_text"])]  # (target, prediction)
    for t in TYPES:
        a = np.array([tuple(s) for s in mine[t]], dtype=np.float64)
        b = np.array([(s[t].precision, s[t].recall, s[t].fmeasure) for s in theirs], dtype=np.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, err_msg=t)
        assert a[:, 2].max() > 0.1  # real overlap, not a comparison of zeros
    corpus = ref.corpus_rouge(xsum["hyps"], xsum["refs"], TYPES)
    for t in TYPES:
        assert abs(corpus[t].fmeasure - np.mean([s[t].fmeasure for s in theirs])) < 1e-9
        assert abs(corpus[t].recall - np.mean([s[t].recall for s in theirs])) < 1e-9


EDGE_CASES = [
    ([], [1, 2, 3]),          # empty hypothesis
    ([1, 2, 3], []),          # empty reference
    ([], []),                 # both empty
    ([4, 5, 6, 4], [4, 5, 6, 4]),  # identical
    ([7], [7]),               # single token: rouge2 has no bigrams
    ([7], [7, 8]),
    ([1, 1, 1, 2], [1, 2, 2]),  # clipping of repeated tokens
    ([3, 1, 2], [1, 2, 3]),
]


@pytest.mark.parametrize("hyp,rf", EDGE_CASES)
def test_edge_cases_match_reference_and_rouge_score(hyp, rf, fast_mod):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=False, tokenizer=WhitespaceTokenizer())
    theirs = scorer.score(" ".join(map(str, rf)), " ".join(map(str, hyp)))
    want = ref.sentence_rouge(hyp, rf)
    assert fast_mod.sentence_rouge(hyp, rf) == want
    for t in TYPES:
        assert tuple(want[t]) == pytest.approx(tuple(theirs[t]), abs=1e-12)
    for n in range(1, 8):  # n larger than either length: all zeros
        assert fast_mod.rouge_n(hyp, rf, n) == ref.rouge_n(hyp, rf, n)
        if n > min(len(hyp), len(rf)):
            assert ref.rouge_n(hyp, rf, n) == (0.0, 0.0, 0.0)


def test_edge_case_values(fast_mod):
    for impl in (ref, fast_mod):
        assert impl.rouge_l([], [1, 2]) == (0.0, 0.0, 0.0)
        assert impl.rouge_n([1, 2], [], 1) == (0.0, 0.0, 0.0)
        assert impl.sentence_rouge([4, 5, 6, 4], [4, 5, 6, 4]) == {t: (1.0, 1.0, 1.0) for t in TYPES}
        assert impl.rouge_n([1, 1, 1, 2], [1, 2, 2], 1) == ref.Score(0.5, 2 / 3, 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
        assert impl.rouge_l([3, 1, 2], [1, 2, 3]) == ref.Score(2 / 3, 2 / 3, 2 * (2 / 3) * (2 / 3) / (4 / 3))
        assert impl.lcs_length([], [1]) == 0
        with pytest.raises(ValueError):
            impl.rouge_n([1], [1], 0)
        with pytest.raises(ValueError):
            impl.corpus_rouge([[1]], [[1], [2]])
        with pytest.raises(ValueError):
            impl.corpus_rouge([], [])
        with pytest.raises(ValueError):
            impl.corpus_rouge([[1]], [[1]], ["rougeLsum"])


def test_random_ids_any_n_and_extreme_values(fast_mod):
    rng = random.Random(1234)
    extremes = [-2**63, -2**62, -1, 0, 2**40, 2**63 - 1000]  # negative and huge ids: no vocabulary assumptions
    for i in range(400):
        vocab = rng.choice([2, 5, 1000])
        offset = (lambda: rng.choice(extremes)) if i % 3 == 0 else (lambda: 0)
        hyp = [offset() + rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        rf = [offset() + rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        for n in (1, 2, 3, 5, 9):
            assert fast_mod.rouge_n(hyp, rf, n) == ref.rouge_n(hyp, rf, n), (hyp, rf, n)
        assert fast_mod.rouge_l(hyp, rf) == ref.rouge_l(hyp, rf), (hyp, rf)


def test_input_types(xsum, fast_mod):
    import torch
    hyps, refs = xsum["hyps"][:50], xsum["refs"][:50]
    want = ref.corpus_rouge(hyps, refs)
    assert fast_mod.corpus_rouge([np.array(h, dtype=np.int32) for h in hyps], [tuple(r) for r in refs]) == want
    assert fast_mod.corpus_rouge([torch.tensor(h) for h in hyps], (np.array(r) for r in refs)) == want
    assert ref.corpus_rouge([np.array(h) for h in hyps], [torch.tensor(r) for r in refs]) == want
    padded = np.array([h[:10] for h in hyps if len(h) >= 10])  # a 2-d array: rows are sequences
    rows = [list(map(int, row)) for row in padded]
    assert fast_mod.corpus_rouge(padded, rows) == ref.corpus_rouge(rows, rows) == {t: (1.0, 1.0, 1.0) for t in TYPES}
    with pytest.raises(TypeError):
        fast_mod.corpus_rouge([np.array([1.5, 2.0])], [[1, 2]])


def test_falls_back_to_reference_with_a_warning(monkeypatch, caplog):
    import unifairseq.metrics.rouge as rouge
    monkeypatch.setitem(sys.modules, "unifairseq.metrics.rouge_fast", None)  # import fails
    try:
        with caplog.at_level(logging.WARNING, logger="unifairseq.metrics.rouge"):
            importlib.reload(rouge)
        assert rouge.IMPLEMENTATION == "python"
        assert rouge.corpus_rouge is ref.corpus_rouge
        assert any("not compiled" in r.getMessage() for r in caplog.records)
    finally:
        monkeypatch.undo()
        importlib.reload(rouge)
    assert rouge.IMPLEMENTATION == ("cython" if fast is not None else "python")
