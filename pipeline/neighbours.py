"""Nearest neighbours of every image among the others: a BallTree and an exact sparse method,
with one deterministic tie rule.

Histograms count out of n_local descriptors, so the squared Euclidean distance between two
normalised histograms is an integer S divided by n_local**2 (S = |a|^2 + |b|^2 - 2 a.b on the
counts). Both methods find candidates their own way and rank them by that exact integer,
then by ascending database ID: ties, which are common, are broken the same way by both, and
their results are identical.
"""

import logging

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import BallTree

from .errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("auto", "balltree", "sparse")
#: What ``method = auto`` takes. Measured with ``python -m benchmarks.neighbours`` (word
#: frequencies as rank**-0.6, 49 descriptors per image, 2 cores): at 20,000 images the sparse
#: method beat the BallTree at every codebook size tried, 2 words (1.5 s against 5.7 s),
#: 4 (2.2 / 4.8), 8 (4.6 / 9.7), 16 (7.5 / 18.2) and 8,500 (see the README's table).
AUTO_METHOD = "sparse"
#: Accumulator entries the sparse method checks at once against its bound.
GROUP = 64
#: Words found in more than this share of the images are accumulated from a dense row of
#: counts (n_images int16) instead of their posting list: cheaper from about 1 in 40 images
#: on (``python -m benchmarks.neighbours``). Words this frequent number at most
#: n_local / DENSE_SHARE, about 116 with the measured word profile.
DENSE_SHARE = 0.03


class Counts:
    """Visual-word counts with what the exact distances need.

    Parameters
    ----------
    counts : sparse matrix of shape (n_images, K), integer
    n_local : int
        Descriptors per image (each row sums to it).
    ids : ndarray of shape (n_images,)
        Database IDs, for the tie rule.
    """

    def __init__(self, counts, n_local, ids):
        self.counts = sp.csr_matrix(counts, dtype=np.int64)
        self.n_local = n_local
        self.norms = np.asarray(self.counts.multiply(self.counts).sum(axis=1)).ravel()
        self.id_rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable")

    def __len__(self):
        return self.counts.shape[0]

    def squared(self, query, candidates):
        """Exact integer S of a query against candidate positions: ndarray of int64."""
        dots = (self.counts[candidates] @ self.counts[query].T).toarray().ravel()
        return self.norms[query] + self.norms[candidates] - 2 * dots

    def rank(self, query, candidates, squared, k):
        """The k best candidates of one query by (S, database ID), the query itself left out.

        Returns
        -------
        neighbours : ndarray of shape (k,), int64 positions
        distances : ndarray of shape (k,), float64: sqrt(S) / n_local
        """
        keep = candidates != query
        candidates, squared = candidates[keep], squared[keep]
        order = np.lexsort((self.id_rank[candidates], squared))[:k]
        return candidates[order], np.sqrt(squared[order]) / self.n_local


def check_k(k, n):
    """Raise ConfigError unless 1 <= k <= n - 1 (each of n images has k other images)."""
    if not 1 <= k <= n - 1:
        raise ConfigError(f"[neighbours] k={k} must be between 1 and the number of images - 1 = {n - 1}; lower it")


def _chunked(n, k, rows, chunk_size, checkpoints, query_chunk, progress=None):
    """Run ``query_chunk(rows) -> (neighbours, distances)`` over chunks of the query rows
    (all n images when ``rows`` is None), each chunk committed to ``checkpoints`` and
    reported to ``progress(done, total)``."""
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    neighbours = np.empty((len(rows), k), dtype=np.int64)
    distances = np.empty((len(rows), k), dtype=np.float64)
    for c, start in enumerate(range(0, len(rows), chunk_size)):
        part = slice(start, start + chunk_size)
        saved = checkpoints.load(c) if checkpoints else None
        if saved is None:
            found, found_d = query_chunk(rows[part])
            saved = {"neighbours": found, "distances": found_d}
            if checkpoints:
                checkpoints.save(c, saved)
        neighbours[part], distances[part] = saved["neighbours"], saved["distances"]
        if progress is not None:
            progress(min(start + chunk_size, len(rows)), len(rows))
    return neighbours, distances


def balltree_neighbours(counts, k=5, rows=None, leaf_size=40, chunk_size=1024, checkpoints=None, progress=None):
    """The k nearest other images of every image, by a scikit-learn BallTree over the histograms.

    Parameters
    ----------
    counts : Counts
    k : int
    rows : array-like of int, optional
        Positions of the query images; all images by default.
    checkpoints : Checkpoints, optional
        Where the neighbours of each chunk of query rows are committed, so a killed run
        resumes after the last committed chunk.
    progress : callable(done, total), optional
        Called after each chunk with the query rows done so far.

    Returns
    -------
    neighbours : ndarray of shape (n_rows, k), int64 positions, nearest first
    distances : ndarray of shape (n_rows, k), float64, non-decreasing along each row
    """
    check_k(k, len(counts))
    x = counts.counts.toarray() / counts.n_local
    tree = BallTree(x, leaf_size=leaf_size)

    def query_chunk(rows):
        # the (k+1)-th distance, self included, bounds the k-th other; the radius query then
        # returns every image tied with it, so the tie rule sees them all
        nearest, _ = tree.query(x[rows], k=k + 1)
        found = tree.query_radius(x[rows], nearest[:, k] + 1e-9)
        ranked = [counts.rank(row, found[i], counts.squared(row, found[i]), k) for i, row in enumerate(rows)]
        return np.array([r[0] for r in ranked]), np.array([r[1] for r in ranked])

    result = _chunked(len(counts), k, rows, chunk_size, checkpoints, query_chunk, progress)
    logger.info("%d nearest neighbours of %d images found with a BallTree", k, len(result[0]))
    return result


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


@numba.njit(parallel=True, cache=True)
def _inverted_file_top_k(rows, indptr, indices, data, block_ptr, post_img, post_cnt, dense_row, dense, norms, id_rank, lightest, k, block, n_threads):
    """Exact k best (S, ID rank) of each query row; see :func:`sparse_neighbours`."""
    n, m, n_blocks = len(norms), len(rows), block_ptr.shape[1] - 1
    out = np.empty((m, k), dtype=np.int64)
    out_s = np.empty((m, k), dtype=np.int64)
    out_r = np.empty((m, k), dtype=np.int64)
    fills = np.zeros(m, dtype=np.int64)
    accumulators = np.zeros((n_threads, block), dtype=np.int32)
    min_norm = norms.min()
    # blocks outside, queries inside: a block's posting lists stay in cache for all the queries
    for tb in range(n_blocks):
        first = tb * block
        size = min(block, n - first)
        for t in numba.prange(n_threads):
            dots = accumulators[t]
            for q in range(t, m, n_threads):
                a = rows[q]
                best, best_s, best_r, fill = out[q], out_s[q], out_r[q], fills[q]
                for p in range(indptr[a], indptr[a + 1]):
                    w, c = indices[p], data[p]
                    r = dense_row[w]
                    if r >= 0:
                        column = dense[r, first : first + size]
                        for j in range(size):
                            dots[j] += c * column[j]
                    else:
                        for e in range(block_ptr[w, tb], block_ptr[w, tb + 1]):
                            dots[post_img[e]] += c * post_cnt[e]
                # images sharing no word with a: S = |a|^2 + |b|^2, so the best of them are
                # among the k + 1 first in (|b|^2, ID) order
                for b in lightest:
                    if b != a and first <= b < first + size and dots[b - first] == 0:
                        fill = _offer(best, best_s, best_r, fill, k, b, norms[a] + norms[b], id_rank[b])
                # S <= the k-th best needs 2 a.b >= |a|^2 + |b|^2 - kth >= |a|^2 + min |b|^2 - kth:
                # most images that share a word fail this on their dot product alone
                least = 1
                if fill == k:
                    least = max(1, (norms[a] + min_norm - best_s[k - 1] + 1) // 2)
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
                            s = norms[a] + norms[b] - 2 * dots[j]
                            if b != a and (fill < k or s <= best_s[k - 1]):
                                fill = _offer(best, best_s, best_r, fill, k, b, s, id_rank[b])
                                if fill == k:
                                    least = max(1, (norms[a] + min_norm - best_s[k - 1] + 1) // 2)
                        dots[j] = 0
                fills[q] = fill
    return out, out_s


def _inverted_file(csr, block, dense_share):
    """The inverted file of the counts, cut into blocks of ``block`` images.

    Returns
    -------
    block_ptr : ndarray of shape (K, n_blocks + 1), int64
        Where block tb of the images starts in the posting list of word w (empty for dense words).
    post_img, post_cnt : ndarray of shape (n_postings,), int32
        Image position within its block, and count, of each posting, word by word.
    dense_row : ndarray of shape (K,), int64
        Row of each dense word in ``dense``, -1 for the others.
    dense : ndarray of shape (n_dense, n_images), int16
        Counts of the words found in more than ``dense_share`` of the images.
    """
    n = csr.shape[0]
    csc = csr.tocsc()
    csc.sort_indices()
    df = np.diff(csc.indptr)
    heavy = np.flatnonzero(df > dense_share * n)
    dense_row = np.full(csc.shape[1], -1, dtype=np.int64)
    dense_row[heavy] = np.arange(len(heavy))
    dense = np.zeros((len(heavy), n), dtype=np.int16)
    for r, w in enumerate(heavy):
        begin, end = csc.indptr[w], csc.indptr[w + 1]
        dense[r, csc.indices[begin:end]] = csc.data[begin:end]
    light_df = np.where(dense_row < 0, df, 0)
    keep = np.repeat(dense_row < 0, df)
    post_img, post_cnt = csc.indices[keep].astype(np.int32), csc.data[keep].astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(light_df)])
    n_blocks = -(-n // block)
    starts = np.arange(n_blocks + 1) * block
    block_ptr = np.empty((csc.shape[1], n_blocks + 1), dtype=np.int64)
    for w in range(csc.shape[1]):
        block_ptr[w] = indptr[w] + np.searchsorted(post_img[indptr[w] : indptr[w + 1]], starts)
    return block_ptr, post_img % block, post_cnt, dense_row, dense


def sparse_neighbours(
    counts, k=5, rows=None, chunk_size=4096, block=1 << 15, dense_share=DENSE_SHARE, checkpoints=None, progress=None
):
    """The k nearest other images of every image, exactly, from an inverted file over visual words.

    For each query image, the posting lists of its words (at most n_local of them) give the
    dot product with every image that shares a word, and from it the exact integer S; every
    other image shares no word, so its S is |a|^2 + |b|^2 and the best of them are the first
    images in order of |b|^2 then ID. An image can only enter a query's k best if its dot
    product reaches a bound set by the k-th best so far, so most images that share a word are
    passed over without looking further. The work per query is the length of its posting
    lists. The images are taken ``block`` at a time, for a whole chunk of queries, so that the
    block's accumulator and posting lists stay in the processor's cache. Queries run in
    parallel on all cores (numba), chunk by chunk, and memory is the counts, their inverted
    file and one accumulator per core.

    Parameters and returns as :func:`balltree_neighbours`.
    """
    n = len(counts)
    check_k(k, n)
    arrays = (
        counts.counts.indptr.astype(np.int64), counts.counts.indices.astype(np.int32),
        counts.counts.data.astype(np.int32), *_inverted_file(counts.counts, block, dense_share),
        counts.norms.astype(np.int64), counts.id_rank.astype(np.int64),
        np.lexsort((counts.id_rank, counts.norms))[: k + 1].astype(np.int64),
    )

    def query_chunk(rows):
        found, squared = _inverted_file_top_k(rows.astype(np.int64), *arrays, k, block, numba.get_num_threads())
        return found, np.sqrt(squared) / counts.n_local

    result = _chunked(n, k, rows, chunk_size, checkpoints, query_chunk, progress)
    logger.info("%d nearest neighbours of %d images found with an inverted file", k, len(result[0]))
    return result


def nearest_neighbours(counts, k=5, method="auto", checkpoints=None, progress=None):
    """The k nearest other images of every image, by ``method`` (see METHODS and AUTO_METHOD)."""
    if method not in METHODS:
        raise ConfigError(f"[neighbours] method={method!r} must be one of {', '.join(METHODS)}")
    if method == "auto":
        method = AUTO_METHOD
    find = balltree_neighbours if method == "balltree" else sparse_neighbours
    return find(counts, k=k, checkpoints=checkpoints, progress=progress)
