"""The inverted file of the sparse method: posting lists of the weighted histograms, and the
numba kernels that find each image's k best others by exact integer keys under the tie rule
of :mod:`pipeline.neighbours`."""

import math

import numba
import numpy as np

#: Accumulator entries the sparse method checks at once against its bound.
GROUP = 64
#: Words found in more than this share of the images are accumulated from a dense row of
#: counts (n_images int16) instead of their posting list. With postings of 4 bytes, 0.12 was
#: within 14 % of the fastest share on both word profiles, 0.03 the slowest (1.3 to 1.4 times
#: 0.12) at 300,000 images (``python -m benchmarks.neighbours --images 300000 --queries 1500
#: --tree-queries 0 --distances tfidf/cosine --exponent 0.6 0.41 --dense-share 0.03 0.06 0.12
#: 0.25 1``, docs/performance.md).
DENSE_SHARE = 0.12
#: Bits of a posting that hold the image's position within its block (the rest, its count).
POSITION_BITS = 16
POSITION_MASK = (1 << POSITION_BITS) - 1


@numba.njit(cache=True)
def _offer(best, best_s, best_r, fill, k, b, s, r):
    """Put candidate ``b`` with key (s, r) into the sorted list of the best ``fill`` <= k."""
    if fill == k and (s > best_s[k - 1] or (s == best_s[k - 1] and r >= best_r[k - 1])):
        return fill
    j = fill if fill < k else k - 1
    while j > 0 and (best_s[j - 1] > s or (best_s[j - 1] == s and best_r[j - 1] > r)):
        best[j], best_s[j], best_r[j] = best[j - 1], best_s[j - 1], best_r[j - 1]
        j -= 1
    best[j], best_s[j], best_r[j] = b, s, r
    return min(fill + 1, k)


@numba.njit(cache=True, inline="always")
def pair_key(cosine, dot, norm_a, norm_b, root_a, root_b):
    """The ranking key of a pair, as :meth:`WeightedHistograms.keys` computes it."""
    if cosine:
        return 1.0 - np.float64(dot) / (root_a * root_b)
    return np.float64(norm_a + norm_b - 2 * dot)


@numba.njit(cache=True, inline="always")
def _skipped(skip_idx, start, end, b):
    """Whether candidate ``b`` is among ``skip_idx[start:end]`` (a handful: the query itself, its verdicts)."""
    for e in range(start, end):
        if skip_idx[e] == b:
            return True
    return False


@numba.njit(cache=True, inline="always")
def _least_dot(cosine, kth, norm_a, min_norm, root_a, min_root):
    """The smallest dot product with which an image can still reach the k-th best key ``kth``."""
    if cosine:  # 1 - a.b / (|a| |b|) <= kth needs a.b >= (1 - kth) |a| |b| >= (1 - kth) |a| min |b|
        return max(1, np.int64(math.floor((1.0 - kth) * root_a * min_root * (1.0 - 1e-9))))
    # S <= kth needs 2 a.b >= |a|^2 + |b|^2 - kth >= |a|^2 + min |b|^2 - kth
    return max(1, (norm_a + min_norm - np.int64(kth) + 1) // 2)


@numba.njit(parallel=True, cache=True)
def _inverted_file_top_k(
    rows,
    skip_ptr,
    skip_idx,
    indptr,
    indices,
    data,
    q_norms,
    q_roots,
    block_ptr,
    postings,
    word_weights,
    table,
    dense_row,
    dense,
    norms,
    roots,
    id_rank,
    c_records,
    q_records,
    other_records,
    best_sharing_no_word,
    cosine,
    k,
    block,
    accumulators,
):
    """Exact k best (key, ID rank) among the candidates (the inverted file, ``norms`` ...) of each
    query row ``rows[q]`` of the query CSR (``indptr`` ... ``q_roots``), leaving out the candidates
    ``skip_idx[skip_ptr[q]:skip_ptr[q + 1]]`` (the image itself, and those a verdict rules out)
    and, with ``other_records``, the candidates whose record ``c_records`` is the query's
    ``q_records``; see :func:`sparse_neighbours`. ``best_sharing_no_word`` holds at least k + the
    most left out of a row. Rows with fewer than k candidates end with position -1 at key inf."""
    n, m, n_blocks = len(norms), len(rows), block_ptr.shape[1] - 1
    n_threads = accumulators.shape[0]
    out = np.full((m, k), -1, dtype=np.int64)
    out_s = np.full((m, k), np.inf, dtype=np.float64)
    out_r = np.empty((m, k), dtype=np.int64)
    fills = np.zeros(m, dtype=np.int64)
    min_norm, min_root = norms.min(), roots.min()
    # blocks outside, queries inside: a block's posting lists stay in cache for all the queries
    for tb in range(n_blocks):
        first = tb * block
        size = min(block, n - first)
        for t in numba.prange(n_threads):
            dots = accumulators[t]
            for q in range(t, m, n_threads):
                a, skip_start, skip_end = rows[q], skip_ptr[q], skip_ptr[q + 1]
                norm_a, root_a, record = q_norms[a], q_roots[a], q_records[a] if other_records else -1
                best, best_s, best_r, fill = out[q], out_s[q], out_r[q], fills[q]
                for p in range(indptr[a], indptr[a + 1]):
                    w, c = indices[p], data[p]
                    r = dense_row[w]
                    if r >= 0:
                        column = dense[r, first : first + size]
                        for j in range(size):
                            dots[j] += c * column[j]
                    else:  # a posting's weighted count is its word's weight times table[its count]
                        scale = np.int64(c) * word_weights[w]
                        for e in range(block_ptr[w, tb], block_ptr[w, tb + 1]):
                            posting = postings[e]
                            dots[posting & POSITION_MASK] += scale * table[posting >> POSITION_BITS]
                # images sharing no word with a: the best of them are among ``best_sharing_no_word``
                for b in best_sharing_no_word:
                    if (
                        first <= b < first + size
                        and dots[b - first] == 0
                        and c_records[b] != record
                        and not _skipped(skip_idx, skip_start, skip_end, b)
                    ):
                        s = pair_key(cosine, 0, norm_a, norms[b], root_a, roots[b])
                        fill = _offer(best, best_s, best_r, fill, k, b, s, id_rank[b])
                # most images that share a word cannot reach the k-th best on their dot product alone
                least = 1
                if fill == k:
                    least = _least_dot(cosine, best_s[k - 1], norm_a, min_norm, root_a, min_root)
                for g in range(0, size, GROUP):
                    end = min(g + GROUP, size)
                    most = 0
                    for j in range(g, end):  # vectorised: one comparison per group, mostly
                        most = max(most, dots[j])
                    if most < least:
                        dots[g:end] = 0
                        continue
                    for j in range(g, end):
                        if dots[j] >= least:
                            b = first + j
                            s = pair_key(cosine, dots[j], norm_a, norms[b], root_a, roots[b])
                            if (
                                (fill < k or s <= best_s[k - 1])
                                and c_records[b] != record
                                and not _skipped(skip_idx, skip_start, skip_end, b)
                            ):
                                fill = _offer(best, best_s, best_r, fill, k, b, s, id_rank[b])
                                if fill == k:
                                    least = _least_dot(cosine, best_s[k - 1], norm_a, min_norm, root_a, min_root)
                        dots[j] = 0
                fills[q] = fill
    return out, out_s


@numba.njit(cache=True)
def _fill_postings(indptr, indices, data, word_weights, table, dense_row, dense, word_start, block, n_blocks):
    """The postings of the CSR rows, word by word in image order (see :func:`_inverted_file`),
    in two passes over the rows: no transposed copy of the counts. Each weighted count is
    kept as the count whose ``table`` entry times its word's weight it is; ``ok`` is False
    when one is not such a product."""
    n_words = len(word_start) - 1
    block_ptr = np.zeros((n_words, n_blocks + 1), dtype=np.int64)
    for i in range(len(indptr) - 1):
        tb = i // block
        for p in range(indptr[i], indptr[i + 1]):
            w = indices[p]
            if dense_row[w] >= 0:
                dense[dense_row[w], i] = data[p]
            else:
                block_ptr[w, tb + 1] += 1
    for w in range(n_words):
        block_ptr[w, 0] = word_start[w]
        for tb in range(n_blocks):
            block_ptr[w, tb + 1] += block_ptr[w, tb]
    cursor = word_start[:-1].copy()
    postings = np.empty(word_start[-1], dtype=np.uint32)
    for i in range(len(indptr) - 1):
        for p in range(indptr[i], indptr[i + 1]):
            w = indices[p]
            if dense_row[w] < 0:
                level = np.searchsorted(table, data[p] // max(word_weights[w], 1))
                if level >= min(len(table), 1 << (32 - POSITION_BITS)) or table[level] * word_weights[w] != data[p]:
                    return block_ptr, postings, False
                postings[cursor[w]] = (i % block) | (np.uint32(level) << POSITION_BITS)
                cursor[w] += 1
    return block_ptr, postings, True


def _inverted_file(csr, word_weights, table, block, dense_share):
    """The inverted file of the weighted counts ``csr`` (each the weight of its word in
    ``word_weights`` times ``table`` at the image's count of the word), cut into blocks of
    ``block`` images (at most 2**POSITION_BITS).

    Returns
    -------
    block_ptr : ndarray of shape (K, n_blocks + 1), int64
        Where block tb of the images starts in the posting list of word w (empty for dense words).
    postings : ndarray of shape (n_postings,), uint32
        Each posting, word by word: the image's position within its block in the low
        POSITION_BITS bits, its count of the word above them (half the bytes of a position and
        a weighted count, and the kernel reads them at about 1.3 times the pace).
    dense_row : ndarray of shape (K,), int64
        Row of each dense word in ``dense``, -1 for the others.
    dense : ndarray of shape (n_dense, n_images), int16 (int32 when a weighted count needs it)
        Weighted counts of the words found in more than ``dense_share`` of the images.
    """
    n, n_words = csr.shape
    df = np.bincount(csr.indices, minlength=n_words)
    heavy = np.flatnonzero(df > dense_share * n)
    dense_row = np.full(n_words, -1, dtype=np.int64)
    dense_row[heavy] = np.arange(len(heavy))
    dense = np.zeros((len(heavy), n), dtype=np.int16 if csr.data.max(initial=0) < 2**15 else np.int32)
    word_start = np.concatenate([[0], np.cumsum(np.where(dense_row < 0, df, 0))]).astype(np.int64)
    if block > 1 << POSITION_BITS:
        raise ValueError(f"blocks of {block} images: at most {1 << POSITION_BITS}")
    word_weights, table = word_weights.astype(np.int64), table.astype(np.int64)
    indptr = csr.indptr.astype(np.int64, copy=False)
    block_ptr, postings, ok = _fill_postings(
        indptr, csr.indices, csr.data, word_weights, table, dense_row, dense, word_start, block, -(-n // block)
    )
    if not ok:
        raise ValueError("the weighted counts are not their words' weights times the power table")
    return block_ptr, postings, word_weights, table, dense_row, dense


class InvertedFile:
    """The images at ``positions`` of ``counts`` (all by default) as the candidates of the sparse
    method, any image of ``counts`` as a query.

    Parameters
    ----------
    counts : WeightedHistograms
    k : int
    positions : ndarray of int, optional
    block, dense_share : see :func:`sparse_neighbours`
    """

    def __init__(self, counts, k, positions=None, block=1 << 15, dense_share=DENSE_SHARE):
        chosen = slice(None) if positions is None else np.asarray(positions, dtype=np.int64)
        vectors = counts.vectors[chosen]
        self.queries = (  # the weighted counts as int32: the kernel runs 13 % faster than on int64
            counts.vectors.indptr.astype(np.int64, copy=False),
            counts.vectors.indices.astype(np.int32, copy=False),
            counts.vectors.data.astype(np.int32),
            counts.norms,
            counts.roots,
        )
        self.k, self.block, self.cosine = k, block, counts.cosine
        self.candidates = (
            *_inverted_file(vectors, counts.weights, counts.table, block, dense_share),
            counts.norms[chosen],
            counts.roots[chosen],
            counts.id_rank[chosen].astype(np.int64),
            counts.records[chosen],
            counts.records,
        )
        # every candidate in the order of its key with an image it shares no word with: a query
        # leaving out s candidates finds its best such images among the first k + s
        self.sharing_no_word = counts.sharing_no_word_order(chosen).astype(np.int64)
        self.largest_record = int(np.bincount(counts.records[chosen]).max(initial=0))
        # dot products are at most the largest squared norm (Cauchy-Schwarz): raw counts fit 32 bits
        wide = counts.norms.max(initial=0) >= 2**31
        self.accumulators = np.zeros((numba.get_num_threads(), block), dtype=np.int64 if wide else np.int32)

    def top_k(self, rows, skip=None, other_records=False):
        """The k best candidates of each query row, leaving out those ``skip`` names for it
        (:func:`skip_self` or :func:`skip_lists`; none by default) and, with ``other_records``,
        those of its own record: (positions among the candidates, -1 past the last; keys, inf there)."""
        rows = np.asarray(rows, dtype=np.int64)
        ptr, idx = skip if skip is not None else (np.zeros(len(rows) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
        most = int(np.diff(ptr).max(initial=0)) + (self.largest_record if other_records else 0)
        return _inverted_file_top_k(
            rows,
            ptr,
            idx,
            *self.queries,
            *self.candidates,
            other_records,
            self.sharing_no_word[: self.k + most],
            self.cosine,
            self.k,
            self.block,
            self.accumulators,
        )
