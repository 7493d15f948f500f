"""ROUGE on token-id sequences: the compiled implementation when built, else the reference.

Use this module (or ``unifairseq.metrics``) rather than either implementation directly::

    from unifairseq.metrics import corpus_rouge
    corpus_rouge(hyp_ids, ref_ids)   # {"rouge1": Score(p, r, f), "rouge2": ..., "rougeL": ...}

``IMPLEMENTATION`` says which one is in use ("cython" or "python"). The two give identical
floats (tests/test_rouge_cython.py); the compiled one is tens of times faster. Build it with
``pip install --no-deps --no-build-isolation -e .`` (see setup.py).
"""
import logging

from .rouge_ref import ROUGE_TYPES, Score, fmeasure, ngram_counts, parse_rouge_type  # noqa: F401

logger = logging.getLogger(__name__)

try:
    from .rouge_fast import (corpus_rouge, lcs_length, pairwise_rouge, rouge_l, rouge_n,  # noqa: F401
                             sentence_rouge)
    IMPLEMENTATION = "cython"
except ImportError as e:  # not compiled (or compiled for another Python)
    logger.warning("unifairseq.metrics.rouge_fast is not compiled (%s); using the pure-Python ROUGE, "
                   "which is much slower. Build it with: pip install --no-deps --no-build-isolation -e .", e)
    from .rouge_ref import (corpus_rouge, lcs_length, pairwise_rouge, rouge_l, rouge_n,  # noqa: F401
                            sentence_rouge)
    IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "ROUGE_TYPES", "Score", "fmeasure", "ngram_counts", "parse_rouge_type",
           "lcs_length", "rouge_n", "rouge_l", "sentence_rouge", "pairwise_rouge", "corpus_rouge"]
