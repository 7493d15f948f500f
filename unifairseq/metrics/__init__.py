"""Validation metrics on token ids (ROUGE-1/2/N/L), for scoring generations during training.

The compiled implementation (``rouge_fast``, Cython) is used when built; otherwise
``rouge_ref`` (pure Python, identical results) with a logged warning. See ``rouge.py``.
"""
from .rouge import (IMPLEMENTATION, ROUGE_TYPES, Score, corpus_rouge, lcs_length,  # noqa: F401
                    pairwise_rouge, rouge_l, rouge_n, sentence_rouge)
