"""Nearest neighbours of every image among the others: a BallTree and an exact sparse method,
with one deterministic tie rule, for the Euclidean and the cosine distance of raw or tf-idf
weighted visual-word histograms.

Each image is a vector of integers: its count of each visual word, raised to ``power`` (in
steps of 1/POWER_SCALE when below 1), times the word's integer weight (1 for ``raw``; for
``tfidf``, the word's inverse document frequency in steps of 1/IDF_SCALE). Every distance is computed from the exact integer dot products and squared
norms of these vectors with one formula: the Euclidean ranking value is the integer
S = |a|^2 + |b|^2 - 2 a.b, the cosine one 1 - a.b / (|a| |b|) in float64. Both methods find
candidates their own way and rank them by that value, then by ascending database ID: ties,
which are common, are broken the same way by both, and their results are identical.
"""

import logging

import numba
import numpy as np
from sklearn.neighbors import BallTree

from .errors import ConfigError, named
from .inverted import DENSE_SHARE, InvertedFile, pair_key
from .records import limited_best, record_best
from .settings import Neighbours

logger = logging.getLogger(__name__)


#: What ``method = auto`` takes. Measured with ``python -m benchmarks.neighbours`` (word
#: frequencies as rank**-0.6, 49 descriptors per image, 2 cores): at 20,000 images the sparse
#: method beat the BallTree at every codebook size tried, 2 words (1.5 s against 5.7 s),
#: 4 (2.2 / 4.8), 8 (4.6 / 9.7), 16 (7.5 / 18.2) and 8,500 (docs/performance.md).
AUTO_METHOD = "sparse"


def query_neighbours(collection, counts, k=5, chunk_size=16):
    """The k nearest collection images of images that are not in the collection.

    Parameters
    ----------
    collection : WeightedHistograms
    counts : sparse matrix of shape (n_queries, K), integer
        Visual-word counts of the query images; they are weighted with the collection's word weights.
    k : int

    Returns
    -------
    neighbours : ndarray of shape (n_queries, k), int64 positions in the collection, nearest first
    distances : ndarray of shape (n_queries, k), float64
    """
    if not 1 <= k <= len(collection):
        raise ConfigError(f"k={k} must be between 1 and the number of images in the collection = {len(collection)}")
    queries = collection.weigh(counts)
    norms = np.asarray(queries.multiply(queries).sum(axis=1)).ravel()
    neighbours = np.empty((queries.shape[0], k), dtype=np.int64)
    distances = np.empty((queries.shape[0], k), dtype=np.float64)
    for start in range(0, queries.shape[0], chunk_size):
        dots = (collection.vectors @ queries[start : start + chunk_size].T).toarray()
        for j in range(dots.shape[1]):
            keys = collection.keys(dots[:, j], norms[start + j])
            kth = np.partition(keys, k - 1)[k - 1]
            candidates = np.flatnonzero(keys <= kth)  # every image tied with the k-th
            neighbours[start + j], distances[start + j] = collection.rank(None, candidates, keys[candidates], k)
    return neighbours, distances


def check_k(k, n):
    """Raise ConfigError unless 1 <= k <= n - 1 (each of n images has k other images)."""
    if not 1 <= k <= n - 1:
        raise ConfigError(f"{named('k')}={k} must be between 1 and the number of images - 1 = {n - 1}; lower it")


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
        if saved is None or not np.array_equal(saved.get("rows"), rows[part]):  # another run's rows: not this one's
            found, found_d = query_chunk(rows[part])
            saved = {"rows": rows[part], "neighbours": found, "distances": found_d}
            if checkpoints:
                checkpoints.save(c, saved)
        neighbours[part], distances[part] = saved["neighbours"], saved["distances"]
        if progress is not None:
            progress(min(start + chunk_size, len(rows)), len(rows))
    return neighbours, distances


def balltree_neighbours(
    counts, k=5, rows=None, leaf_size=40, chunk_size=1024, checkpoints=None, progress=None, own=None
):
    """The k nearest other images of every image, by a scikit-learn BallTree over the histograms.

    Parameters
    ----------
    counts : WeightedHistograms
    k : int
    own : int, optional
        The most neighbours from an image's own record (``pipeline.records``); None: no limit.
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
    x = counts.vectors.toarray().astype(np.float64)
    # Euclidean on the weighted histograms, or on unit vectors, whose order is the cosine's
    x /= counts.roots[:, None] if counts.metric == "cosine" else counts.unit
    tree = BallTree(x, leaf_size=leaf_size)

    # with a limit, the images of the query's record are searched apart (pipeline.records)
    apart = 0 if own is None else int(np.bincount(counts.records).max())
    nearest_k = min(len(counts), k + 1 + apart)

    def listable(found, row):
        """Which images of ``found`` the tree may give ``row``: not itself, nor (with a limit) its record's."""
        return (found != row) & ((own is None) | (counts.records[found] != counts.records[row]))

    def query_chunk(rows):
        # the k-th listable image among the (k+1+apart) nearest bounds the k-th of the list; the
        # radius query then returns every image tied with it, so the tie rule sees them all
        distances, nearest = tree.query(x[rows], k=nearest_k)
        taken = [d[listable(f, row)] for d, f, row in zip(distances, nearest, rows)]
        bound = np.array([d[min(k, len(d)) - 1] if len(d) else 0.0 for d in taken])
        found = [f[listable(f, row)] for f, row in zip(tree.query_radius(x[rows], bound + 1e-9), rows)]
        width = max(len(f) for f in found)
        candidates = np.full((len(rows), width), -1, dtype=np.int64)
        keys = np.full((len(rows), width), np.inf)
        for i, (f, row) in enumerate(zip(found, rows)):
            candidates[i, : len(f)], keys[i, : len(f)] = f, counts.pair_keys(row, f)
        best, best_keys = limited_best(counts, rows, candidates, keys, k, None)
        if own:
            mine, mine_keys = record_best(counts, rows, own)
            both = limited_best(counts, rows, np.hstack([best, mine]), np.hstack([best_keys, mine_keys]), k, own)
            best, best_keys = both
        return best, counts.distances(best_keys)

    result = _chunked(len(counts), k, rows, chunk_size, checkpoints, query_chunk, progress)
    logger.info("%d nearest neighbours of %d images found with a BallTree", k, len(result[0]))
    return result


def sparse_neighbours(
    counts,
    k=5,
    rows=None,
    chunk_size=4096,
    block=1 << 15,
    dense_share=DENSE_SHARE,
    checkpoints=None,
    progress=None,
    own=None,
):
    """The k nearest other images of every image, exactly, from an inverted file over visual words.

    For each query image, the posting lists of its words (at most n_local of them) give the
    exact dot product with every image that shares a word, and from it the key; every other
    image shares no word, so its key depends on |b| alone (|a|^2 + |b|^2 for Euclidean, 1 for
    cosine) and the best of them are the first images in that order then ID. An image can only enter a query's k best if its dot
    product reaches a bound set by the k-th best so far, so most images that share a word are
    passed over without looking further. The work per query is the length of its posting
    lists. The images are taken ``block`` at a time, for a whole chunk of queries, so that the
    block's accumulator and posting lists stay in the processor's cache. Queries run in
    parallel on all cores (numba), chunk by chunk, and memory is the counts, their inverted
    file and one accumulator per core.

    Parameters and returns as :func:`balltree_neighbours`. The inverted file is made once per
    ``counts`` (:meth:`WeightedHistograms.inverted_file`): calls for several blocks of rows share it.
    """
    n = len(counts)
    check_k(k, n)
    query_chunk = _query_chunk(counts, counts.inverted_file(k, block, dense_share), own)
    result = _chunked(n, k, rows, chunk_size, checkpoints, query_chunk, progress)
    logger.info("%d nearest neighbours of %d images found with an inverted file", k, len(result[0]))
    return result


def skip_self(selves):
    """The ``skip`` of :meth:`InvertedFile.top_k` that leaves out candidate ``selves[i]`` of row i (-1: none)."""
    selves = np.asarray(selves, dtype=np.int64)
    kept = selves >= 0
    return np.concatenate([[0], np.cumsum(kept)]).astype(np.int64), selves[kept]


def skip_lists(lists):
    """The ``skip`` of :meth:`InvertedFile.top_k` that leaves out the candidates ``lists[i]`` of row i."""
    lists = [np.asarray(a, dtype=np.int64).ravel() for a in lists]
    ptr = np.concatenate([[0], np.cumsum([len(a) for a in lists])]).astype(np.int64)
    return ptr, (np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)).astype(np.int64)


def _query_chunk(counts, search, own=None):
    """``query_chunk(rows)`` for :func:`_chunked`: the k best other images of each row among all,
    at most ``own`` of them from its own record (None: no limit)."""

    def query_chunk(rows):
        found, keys = search.top_k(rows, skip_self(rows), other_records=own is not None)
        if own:
            mine, mine_keys = record_best(counts, rows, own)
            found, keys = limited_best(
                counts, rows, np.hstack([found, mine]), np.hstack([keys, mine_keys]), search.k, own
            )
        return found, counts.distances(keys)

    return query_chunk


@numba.njit(parallel=True, cache=True)
def ranking_values(rows, listed, indptr, indices, data, norms, roots, cosine):
    """The ranking value of each image of ``rows`` with each of its ``listed`` images (CSR rows with sorted indices)."""
    keys = np.empty(listed.shape, dtype=np.float64)
    for i in numba.prange(len(rows)):
        a = rows[i]
        for j in range(listed.shape[1]):
            b = listed[i, j]
            dot = np.int64(0)
            p, p_end, q, q_end = indptr[a], indptr[a + 1], indptr[b], indptr[b + 1]
            while p < p_end and q < q_end:
                if indices[p] == indices[q]:
                    dot += np.int64(data[p]) * np.int64(data[q])
                    p += 1
                    q += 1
                elif indices[p] < indices[q]:
                    p += 1
                else:
                    q += 1
            keys[i, j] = pair_key(cosine, dot, norms[a], norms[b], roots[a], roots[b])
    return keys


def update_neighbours(
    counts,
    previous,
    new,
    k=5,
    rows=None,
    chunk_size=4096,
    block=1 << 15,
    dense_share=DENSE_SHARE,
    checkpoints=None,
    progress=None,
    own=None,
):
    """The k nearest other images of every image, as :func:`sparse_neighbours` finds them, from
    the lists of a run over the same word weights: only where they can have changed.

    An image that is new, or whose list held an image that is gone or changed, is queried
    against the whole collection. Every other image's list is still its k best among the
    images of that run that are still here (the keys between unchanged images are unchanged),
    so its k best now are the best of that list and of its k best among the new images, which
    one query of it against an inverted file of the new images alone gives. Keys and the tie
    rule are those of the full search, so the result is the same, value for value. With a limit
    ``own`` on an image's own record, the list is merged under that limit with the new images'
    best of the other records and of its own (``pipeline.records``).

    Parameters
    ----------
    counts : WeightedHistograms
        The collection now, weighted with the word weights of the earlier run.
    previous : ndarray of shape (n_images, k), int64
        Each image's list of the earlier run as positions in ``counts``, -1 for a neighbour that
        is gone; one that is new (changed: its histogram is not the one it was ranked with)
        counts as gone too. Rows of new images are not read.
    new : ndarray of shape (n_images,), bool
        Images new or changed since the earlier run.
    rows : ndarray of int, optional
        Positions of the images whose lists are wanted (all by default): a shard's share.
    k, chunk_size, block, dense_share, checkpoints, progress, own
        As :func:`sparse_neighbours`; ``progress`` counts the images queried.

    Returns
    -------
    neighbours, distances : as :func:`sparse_neighbours`, one row per row of ``rows``
    queried : ndarray of shape (n_rows,), bool
        The images queried against the whole collection.
    """
    n = len(counts)
    check_k(k, n)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    new = np.asarray(new, dtype=bool)
    previous = np.asarray(previous, dtype=np.int64)[rows]
    previous = np.where((previous < 0) | new[np.maximum(previous, 0)], -1, previous)  # a changed image is gone too
    queried = new[rows] | (previous < 0).any(axis=1)
    asked = np.flatnonzero(queried)
    neighbours, distances = np.empty((len(rows), k), dtype=np.int64), np.empty((len(rows), k), dtype=np.float64)
    if len(asked):
        query_chunk = _query_chunk(counts, counts.inverted_file(k, block, dense_share), own)
        neighbours[asked], distances[asked] = _chunked(
            n, k, rows[asked], chunk_size, checkpoints, query_chunk, progress
        )
    kept = np.flatnonzero(~queried)
    listed = previous[kept]
    v = counts.vectors
    keys = ranking_values(rows[kept], listed, v.indptr, v.indices, v.data, counts.norms, counts.roots, counts.cosine)
    entering = np.flatnonzero(new)
    if len(kept) and len(entering):
        offered = InvertedFile(counts, k, entering, block, dense_share)
        found, found_keys = offered.top_k(rows[kept], other_records=own is not None)
        found = np.where(found >= 0, entering[np.maximum(found, 0)], -1)
        merged, merged_keys = [listed, found], [keys, found_keys]
        if own:
            mine, mine_keys = record_best(counts, rows[kept], own, among=new)
            merged, merged_keys = merged + [mine], merged_keys + [mine_keys]
        listed, keys = limited_best(counts, rows[kept], np.hstack(merged), np.hstack(merged_keys), k, own)
    neighbours[kept], distances[kept] = listed, counts.distances(keys)
    logger.info(
        "%d nearest neighbours of %d of %d images: %d queried (%d of the collection new or changed), %d kept with "
        "the new images offered",
        k,
        len(rows),
        n,
        len(asked),
        len(entering),
        len(kept),
    )
    return neighbours, distances, queried


def nearest_neighbours(counts, k=5, method="auto", rows=None, checkpoints=None, progress=None, own=None):
    """The k nearest other images of every image (of those at ``rows``), at most ``own`` of them
    from its own record (None: no limit), by ``method`` (see METHODS and AUTO_METHOD)."""
    Neighbours.check("method", method)
    if method == "auto":
        method = AUTO_METHOD
    if method == "balltree":
        return balltree_neighbours(counts, k=k, rows=rows, checkpoints=checkpoints, progress=progress, own=own)
    return sparse_neighbours(counts, k=k, rows=rows, checkpoints=checkpoints, progress=progress, own=own)
