# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled ROUGE-1/2/N/L on token-id sequences: the same numbers as ``rouge_ref``, fast.

The Python-level API mirrors :mod:`unifairseq.metrics.rouge_ref` (``rouge_n``, ``rouge_l``,
``lcs_length``, ``sentence_rouge``, ``pairwise_rouge``, ``corpus_rouge``) and returns the
same :class:`~unifairseq.metrics.rouge_ref.Score` tuples, bit for bit: every score is the
same sequence of IEEE double operations on the same integers (see ``rouge_ref`` for the
definitions).

How it works:

* Inputs (lists/tuples of ints, 1-d integer arrays or CPU tensors, or a 2-d integer array
  whose rows are the sequences) are packed once into one flat ``int64`` buffer plus offsets;
  everything after that runs on raw C arrays with the GIL released.
* N-gram overlap: the n-grams of the side with fewer of them go into an open-addressing
  hash table with their counts; each n-gram of the other side then consumes one occurrence
  if present. The number consumed is the clipped overlap ``sum(min(count_hyp, count_ref))``.
  Keys: when ``n * bits <= 64`` (``bits`` = bits needed for ``id - min_id`` over the corpus,
  e.g. 16 for a 50k vocabulary, so up to 4-grams) an n-gram is packed losslessly into one
  ``uint64`` (rolled from the previous one); otherwise (any ids, any ``n``) a slot holds the
  n-gram's hash and start, and equality compares the ``n`` ids. Either way there are no false
  matches. Slots carry a stamp, so the table is never cleared between pairs; the table has
  at least four slots per n-gram, which keeps probe chains (and mispredicted branches) short.
  Unigrams over an id span below 2M skip hashing: a count array indexed by ``id - min_id``
  is incremented for one side and consumed branch-free by the other, then reset.
* LCS: the usual dynamic program over two rows of length ``min(len(hyp), len(ref)) + 1``.
"""
from libc.stdint cimport int64_t, uint64_t, int32_t
from libc.stdlib cimport calloc, malloc, free

import numpy as np

from unifairseq.metrics.rouge_ref import ROUGE_TYPES, Score, parse_rouge_type

__all__ = ["Score", "ROUGE_TYPES", "lcs_length", "rouge_n", "rouge_l", "sentence_rouge",
           "pairwise_rouge", "corpus_rouge"]


# ----------------------------------------------------------------------------- C kernels

_DIRECT_MAX_SPAN = 1 << 21  # unigram count array of up to 8 MiB (2M distinct ids)

cdef struct Slot:
    uint64_t key        # packed n-gram, or the hash of the n-gram on the general path
    Py_ssize_t start    # general path: where the n-gram starts in the inserted side
    Py_ssize_t count    # occurrences not yet matched
    int64_t stamp       # the slot is in use for the current pair iff stamp == Work.stamp


cdef struct Work:
    Slot* table
    Py_ssize_t table_cap    # a power of two
    int64_t stamp
    uint64_t lo             # smallest id in the corpus
    int bits                # bits needed for (id - lo); n-grams with n * bits <= 64 are packed
    int64_t* rows           # 2 * (max length + 1) LCS cells
    int32_t* counts         # zeroed count per id - lo (unigrams), or NULL when the id span is large


cdef inline Py_ssize_t _table_shift(Py_ssize_t ga, Py_ssize_t* mask) noexcept nogil:
    """Table of at least 4 * ga slots (load <= 1/4, few probes and few mispredicted
    branches): returns the hash shift, sets the mask."""
    cdef Py_ssize_t cap = 16
    cdef int shift = 60
    while cap < 4 * ga:
        cap <<= 1
        shift -= 1
    mask[0] = cap - 1
    return shift


cdef inline uint64_t _hash(const int64_t* t, Py_ssize_t n) noexcept nogil:
    # multiplicative (Fibonacci) hashing, FxHash-style for n > 1; the table index is taken
    # from the top bits, which depend on every bit of every id
    cdef uint64_t h = 0
    cdef Py_ssize_t j
    for j in range(n):
        h = (((h << 5) | (h >> 59)) ^ <uint64_t>t[j]) * <uint64_t>0x9E3779B97F4A7C15ULL
    return h


cdef inline bint _same(const int64_t* a, const int64_t* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        if a[j] != b[j]:
            return False
    return True


cdef Py_ssize_t _overlap_general(const int64_t* a, Py_ssize_t ga, const int64_t* b, Py_ssize_t gb,
                                 Py_ssize_t n, Work* w) noexcept nogil:
    """Clipped overlap of the ``ga`` n-grams starting in ``a`` and the ``gb`` in ``b``.

    Any ids and any ``n``: slots hold the n-gram's hash and start; equality compares ids.
    """
    cdef Py_ssize_t mask = 0, i, pos, overlap = 0
    cdef int shift = _table_shift(ga, &mask)
    cdef uint64_t h
    cdef Slot* s
    w.stamp += 1
    cdef int64_t stamp = w.stamp
    cdef Slot* table = w.table
    for i in range(ga):
        h = _hash(a + i, n)
        pos = <Py_ssize_t>(h >> shift)
        while True:
            s = &table[pos]
            if s.stamp != stamp:
                s.stamp = stamp
                s.key = h
                s.start = i
                s.count = 1
                break
            if s.key == h and _same(a + s.start, a + i, n):
                s.count += 1
                break
            pos = (pos + 1) & mask
    for i in range(gb):
        h = _hash(b + i, n)
        pos = <Py_ssize_t>(h >> shift)
        while True:
            s = &table[pos]
            if s.stamp != stamp:
                break
            if s.key == h and _same(a + s.start, b + i, n):
                if s.count > 0:
                    s.count -= 1
                    overlap += 1
                break
            pos = (pos + 1) & mask
    return overlap


cdef inline uint64_t _next_key(const int64_t* t, Py_ssize_t i, Py_ssize_t n, uint64_t key,
                               uint64_t lo, int bits, uint64_t kmask) noexcept nogil:
    """Packed key of the n-gram at i: the n values (id - lo) side by side, ``bits`` each.

    For i > 0 it is rolled from the key at i - 1 (``n >= 2`` implies ``bits <= 32``).
    """
    cdef Py_ssize_t j
    if n == 1:
        return <uint64_t>t[i] - lo
    if i > 0:
        return ((key << bits) | (<uint64_t>t[i + n - 1] - lo)) & kmask
    key = 0
    for j in range(n):
        key = (key << bits) | (<uint64_t>t[j] - lo)
    return key


cdef Py_ssize_t _overlap_packed(const int64_t* a, Py_ssize_t ga, const int64_t* b, Py_ssize_t gb,
                                Py_ssize_t n, Work* w) noexcept nogil:
    """As ``_overlap_general`` when each n-gram packs losslessly into one 64-bit key."""
    cdef Py_ssize_t mask = 0, i, pos, overlap = 0
    cdef int shift = _table_shift(ga, &mask)
    cdef uint64_t key = 0, lo = w.lo
    cdef int bits = w.bits
    cdef uint64_t kmask = ~(<uint64_t>0) if n * bits >= 64 else ((<uint64_t>1) << (n * bits)) - 1
    cdef Slot* s
    w.stamp += 1
    cdef int64_t stamp = w.stamp
    cdef Slot* table = w.table
    for i in range(ga):
        key = _next_key(a, i, n, key, lo, bits, kmask)
        pos = <Py_ssize_t>((key * <uint64_t>0x9E3779B97F4A7C15ULL) >> shift)
        while True:
            s = &table[pos]
            if s.stamp != stamp:
                s.stamp = stamp
                s.key = key
                s.count = 1
                break
            if s.key == key:
                s.count += 1
                break
            pos = (pos + 1) & mask
    for i in range(gb):
        key = _next_key(b, i, n, key, lo, bits, kmask)
        pos = <Py_ssize_t>((key * <uint64_t>0x9E3779B97F4A7C15ULL) >> shift)
        while True:
            s = &table[pos]
            if s.stamp != stamp:
                break
            if s.key == key:
                if s.count > 0:
                    s.count -= 1
                    overlap += 1
                break
            pos = (pos + 1) & mask
    return overlap


cdef Py_ssize_t _overlap_direct(const int64_t* a, Py_ssize_t ga, const int64_t* b, Py_ssize_t gb,
                                Work* w) noexcept nogil:
    """Unigram overlap with a directly indexed count array (no branches in the loops)."""
    cdef int32_t* cnt = w.counts
    cdef uint64_t lo = w.lo
    cdef Py_ssize_t i, overlap = 0
    cdef int32_t c, hit
    cdef uint64_t v
    for i in range(ga):
        cnt[<uint64_t>a[i] - lo] += 1
    for i in range(gb):
        v = <uint64_t>b[i] - lo
        c = cnt[v]
        hit = c > 0
        overlap += hit
        cnt[v] = c - hit
    for i in range(ga):
        cnt[<uint64_t>a[i] - lo] = 0
    return overlap


cdef inline Py_ssize_t _ngram_overlap(const int64_t* a, Py_ssize_t ga, const int64_t* b, Py_ssize_t gb,
                                      Py_ssize_t n, Work* w) noexcept nogil:
    if n == 1 and w.counts != NULL:
        return _overlap_direct(a, ga, b, gb, w)
    if n * w.bits <= 64:
        return _overlap_packed(a, ga, b, gb, n, w)
    return _overlap_general(a, ga, b, gb, n, w)


cdef inline double _fmeasure(double p, double r) noexcept nogil:
    # the same operations, in the same order, as rouge_ref.fmeasure
    if p + r > 0:
        return 2.0 * p * r / (p + r)
    return 0.0


cdef void _rouge_n(const int64_t* h, Py_ssize_t m, const int64_t* r, Py_ssize_t k, Py_ssize_t n,
                   Work* w, double* out) noexcept nogil:
    cdef Py_ssize_t gh = m - n + 1 if m >= n else 0
    cdef Py_ssize_t gr = k - n + 1 if k >= n else 0
    cdef Py_ssize_t overlap = 0
    cdef double p, rc
    if gh > 0 and gr > 0:
        if gh <= gr:
            overlap = _ngram_overlap(h, gh, r, gr, n, w)
        else:
            overlap = _ngram_overlap(r, gr, h, gh, n, w)
    p = <double>overlap / <double>(gh if gh > 1 else 1)
    rc = <double>overlap / <double>(gr if gr > 1 else 1)
    out[0] = p
    out[1] = rc
    out[2] = _fmeasure(p, rc)


cdef Py_ssize_t _lcs(const int64_t* a, Py_ssize_t m, const int64_t* b, Py_ssize_t k,
                     int64_t* rows) noexcept nogil:
    """LCS length; two rows of ``k + 1`` cells (pass the shorter sequence as ``b``)."""
    cdef int64_t* prev = rows
    cdef int64_t* cur = rows + k + 1
    cdef int64_t* tmp
    cdef int64_t x, up, left
    cdef Py_ssize_t i, j
    for j in range(k + 1):
        prev[j] = 0
    cur[0] = 0
    for i in range(m):
        x = a[i]
        for j in range(k):
            if x == b[j]:
                cur[j + 1] = prev[j] + 1
            else:
                up = prev[j + 1]
                left = cur[j]
                cur[j + 1] = up if up > left else left
        tmp = prev
        prev = cur
        cur = tmp
    return <Py_ssize_t>prev[k]


cdef void _rouge_l(const int64_t* h, Py_ssize_t m, const int64_t* r, Py_ssize_t k,
                   Work* w, double* out) noexcept nogil:
    cdef Py_ssize_t lcs
    cdef double p, rc
    if m == 0 or k == 0:
        out[0] = 0.0
        out[1] = 0.0
        out[2] = 0.0
        return
    if k <= m:
        lcs = _lcs(h, m, r, k, w.rows)
    else:
        lcs = _lcs(r, k, h, m, w.rows)
    p = <double>lcs / <double>m
    rc = <double>lcs / <double>k
    out[0] = p
    out[1] = rc
    out[2] = _fmeasure(p, rc)


cdef void _score_all(const int64_t* hd, const int64_t* ho, const int64_t* rd, const int64_t* ro,
                     Py_ssize_t npairs, const Py_ssize_t* kinds, Py_ssize_t nkinds,
                     double* out, Work* w) noexcept nogil:
    """out[(i * nkinds + t) * 3 + {0,1,2}] = P/R/F of pair i for ROUGE kind t (0 = L)."""
    cdef Py_ssize_t i, t, m, k
    cdef const int64_t* h
    cdef const int64_t* r
    for i in range(npairs):
        h = hd + ho[i]
        m = <Py_ssize_t>(ho[i + 1] - ho[i])
        r = rd + ro[i]
        k = <Py_ssize_t>(ro[i + 1] - ro[i])
        for t in range(nkinds):
            if kinds[t] == 0:
                _rouge_l(h, m, r, k, w, out + (i * nkinds + t) * 3)
            else:
                _rouge_n(h, m, r, k, kinds[t], w, out + (i * nkinds + t) * 3)


# ----------------------------------------------------------------------------- packing

cdef object _int_array(object s):
    a = np.asarray(s)
    if a.ndim != 1:
        raise ValueError(f"each sequence must be 1-d, got an array of shape {a.shape}")
    if a.size and a.dtype.kind not in "iub":
        raise TypeError(f"token ids must be integers, got dtype {a.dtype}")
    return a


cdef tuple _pack(object seqs):
    """(data, offsets): int64 arrays; sequence i is data[offsets[i]:offsets[i + 1]].

    ``data`` has one spare element so that it is never empty (a valid pointer).
    """
    cdef Py_ssize_t n, i, k, length, total
    cdef int64_t[::1] d
    cdef int64_t[::1] off
    cdef object x
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        if seqs.size and seqs.dtype.kind not in "iub":
            raise TypeError(f"token ids must be integers, got dtype {seqs.dtype}")
        n, length = seqs.shape
        data = np.empty(n * length + 1, dtype=np.int64)
        data[:n * length] = seqs.reshape(-1)
        return data, np.arange(n + 1, dtype=np.int64) * length
    if isinstance(seqs, np.ndarray) and seqs.ndim != 1:
        raise ValueError(f"expected a list of sequences or a 2-d array, got shape {seqs.shape}")
    items = seqs if isinstance(seqs, (list, tuple)) else list(seqs)
    n = len(items)
    offsets = np.empty(n + 1, dtype=np.int64)
    off = offsets
    off[0] = 0
    arrays = None
    for i in range(n):
        s = items[i]
        if type(s) is list or type(s) is tuple:
            length = len(s)
        else:
            a = _int_array(s)
            if arrays is None:
                arrays = {}
            arrays[i] = a
            length = a.shape[0]
        off[i + 1] = off[i] + length
    total = off[n]
    data = np.empty(total + 1, dtype=np.int64)
    d = data
    for i in range(n):
        s = items[i]
        k = off[i]
        if type(s) is list or type(s) is tuple:
            if len(s) != off[i + 1] - k:
                raise RuntimeError("a sequence changed length while being read")
            if type(s) is list:
                for x in <list>s:
                    d[k] = x
                    k += 1
            else:
                for x in <tuple>s:
                    d[k] = x
                    k += 1
        else:
            data[k:off[i + 1]] = arrays[i]
    return data, offsets


cdef object _scores(hyps, refs, list kinds):
    """float64 array (pairs, len(kinds), 3) of precision/recall/F."""
    hdata, hoff = _pack(hyps)
    rdata, roff = _pack(refs)
    cdef Py_ssize_t npairs = hoff.shape[0] - 1
    if roff.shape[0] - 1 != npairs:
        raise ValueError(f"got {npairs} hypotheses but {roff.shape[0] - 1} references")
    cdef Py_ssize_t nkinds = len(kinds)
    out = np.zeros((npairs, nkinds, 3), dtype=np.float64)
    if npairs == 0 or nkinds == 0:
        return out
    cdef Py_ssize_t maxlen = max(int(np.diff(hoff).max()), int(np.diff(roff).max()), 1)
    cdef const int64_t[::1] hd = hdata
    cdef const int64_t[::1] ho = hoff
    cdef const int64_t[::1] rd = rdata
    cdef const int64_t[::1] ro = roff
    cdef double[:, :, ::1] o = out
    kinds_arr = np.asarray(kinds, dtype=np.intp)
    cdef const Py_ssize_t[::1] kd = kinds_arr
    cdef Work w
    ids = [x[:x.shape[0] - 1] for x in (hdata, rdata) if x.shape[0] > 1]  # drop the spare element
    lo = min([int(x.min()) for x in ids], default=0)
    span = max([int(x.max()) for x in ids], default=0) - lo
    w.lo = <uint64_t>(lo & 0xFFFFFFFFFFFFFFFF)
    w.bits = max(span.bit_length(), 1)
    w.table_cap = 16
    while w.table_cap < 4 * maxlen:
        w.table_cap <<= 1
    w.stamp = 0
    w.table = <Slot*>calloc(w.table_cap, sizeof(Slot))
    w.rows = <int64_t*>malloc(2 * (maxlen + 1) * sizeof(int64_t))
    cdef bint direct = 1 in kinds and span < _DIRECT_MAX_SPAN and maxlen < 2**31
    w.counts = <int32_t*>calloc(span + 1, sizeof(int32_t)) if direct else NULL
    try:
        if w.table == NULL or w.rows == NULL or (direct and w.counts == NULL):
            raise MemoryError()
        with nogil:
            _score_all(&hd[0], &ho[0], &rd[0], &ro[0], npairs, &kd[0], nkinds, &o[0, 0, 0], &w)
    finally:
        free(w.table)
        free(w.rows)
        free(w.counts)
    return out


# ----------------------------------------------------------------------------- Python API

cdef object _score(double[:, :, ::1] o, Py_ssize_t i, Py_ssize_t j):
    """Score of pair i, kind j, with plain Python floats."""
    return Score(o[i, j, 0], o[i, j, 1], o[i, j, 2])


def rouge_n(hyp, ref, n=1):
    """ROUGE-N of one hypothesis against one reference, as a ``Score``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _score(_scores((hyp,), (ref,), [int(n)]), 0, 0)


def rouge_l(hyp, ref):
    """ROUGE-L (LCS based) of one hypothesis against one reference, as a ``Score``."""
    return _score(_scores((hyp,), (ref,), [0]), 0, 0)


def lcs_length(a, b):
    """Length of the longest common subsequence of two id sequences."""
    adata, aoff = _pack((a,))
    bdata, boff = _pack((b,))
    cdef Py_ssize_t m = aoff[1], k = boff[1], result
    cdef const int64_t[::1] ad = adata
    cdef const int64_t[::1] bd = bdata
    if m == 0 or k == 0:
        return 0
    if k > m:
        ad, bd = bd, ad
        m, k = k, m
    cdef int64_t* rows = <int64_t*>malloc(2 * (k + 1) * sizeof(int64_t))
    if rows == NULL:
        raise MemoryError()
    with nogil:
        result = _lcs(&ad[0], m, &bd[0], k, rows)
    free(rows)
    return result


def sentence_rouge(hyp, ref, rouge_types=ROUGE_TYPES):
    """``{rouge_type: Score}`` for one pair."""
    types = list(rouge_types)
    o = _scores((hyp,), (ref,), [parse_rouge_type(t) for t in types])
    return {t: _score(o, 0, j) for j, t in enumerate(types)}


def pairwise_rouge(hyps, refs, rouge_types=ROUGE_TYPES):
    """``{rouge_type: [Score per pair]}`` for parallel lists of hypotheses and references."""
    types = list(rouge_types)
    cdef double[:, :, ::1] o = _scores(hyps, refs, [parse_rouge_type(t) for t in types])
    cdef Py_ssize_t j, npairs = o.shape[0]
    result = {}
    for j, t in enumerate(types):
        result[t] = [_score(o, i, j) for i in range(npairs)]
    return result


def corpus_rouge(hyps, refs, rouge_types=ROUGE_TYPES):
    """``{rouge_type: Score}``: mean per-pair precision, recall and F (left-to-right sums).

    Raises ValueError on an empty corpus or when the two sides differ in length.
    """
    types = list(rouge_types)
    cdef double[:, :, ::1] o = _scores(hyps, refs, [parse_rouge_type(t) for t in types])
    cdef Py_ssize_t i, j, npairs = o.shape[0]
    cdef double p, r, f
    if npairs == 0:
        raise ValueError("corpus_rouge needs at least one hypothesis/reference pair")
    result = {}
    for j, t in enumerate(types):
        p = r = f = 0.0
        for i in range(npairs):
            p += o[i, j, 0]
            r += o[i, j, 1]
            f += o[i, j, 2]
        result[t] = Score(p / npairs, r / npairs, f / npairs)
    return result
