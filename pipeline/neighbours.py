"""Nearest neighbours of every image among the others: a BallTree and an exact sparse method,
with one deterministic tie rule.

Histograms count out of n_local descriptors, so the squared Euclidean distance between two
normalised histograms is an integer S divided by n_local**2 (S = |a|^2 + |b|^2 - 2 a.b on the
counts). Both methods find candidates their own way and rank them by that exact integer,
then by ascending database ID: ties, which are common, are broken the same way by both, and
their results are identical.
"""

import logging

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import BallTree

from .errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("auto", "balltree", "sparse")
#: ``method = auto`` takes the BallTree up to this many visual words, the sparse method above.
#: Measured with ``python -m benchmarks.neighbours`` (1/rank word frequencies, 49 descriptors
#: per image): 20,000 images with 4 words BallTree 6.9 s, sparse 8.8 s; 8 words 12.7 s and
#: 11.2 s; 16 words 19.6 s and 15.2 s; 2,000 images with 1,000 words 9.9 s and 0.16 s. A tree
#: prunes only in very few dimensions.
AUTO_MAX_TREE_WORDS = 4


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


def _check_k(k, n):
    if not 1 <= k <= n - 1:
        raise ConfigError(f"[neighbours] k={k} must be between 1 and the number of images - 1 = {n - 1}")


def _chunked(counts, k, chunks, checkpoints, query_chunk):
    """Run ``query_chunk`` over consecutive row ranges, each committed to ``checkpoints``."""
    n = len(counts)
    neighbours = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float64)
    for c, rows in enumerate(chunks):
        saved = checkpoints.load(c) if checkpoints else None
        if saved is None:
            ranked = query_chunk(rows)
            saved = {"neighbours": np.array([r[0] for r in ranked]), "distances": np.array([r[1] for r in ranked])}
            if checkpoints:
                checkpoints.save(c, saved)
        neighbours[rows], distances[rows] = saved["neighbours"], saved["distances"]
    return neighbours, distances


def balltree_neighbours(counts, k=5, leaf_size=40, chunk_size=1024, checkpoints=None):
    """The k nearest other images of every image, by a scikit-learn BallTree over the histograms.

    Parameters
    ----------
    counts : Counts
    k : int
    checkpoints : Checkpoints, optional
        Where the neighbours of each chunk of query rows are committed, so a killed run
        resumes after the last committed chunk.

    Returns
    -------
    neighbours : ndarray of shape (n_images, k), int64 positions, nearest first
    distances : ndarray of shape (n_images, k), float64, non-decreasing along each row
    """
    _check_k(k, len(counts))
    x = counts.counts.toarray() / counts.n_local
    tree = BallTree(x, leaf_size=leaf_size)

    def query_chunk(rows):
        # the (k+1)-th distance, self included, bounds the k-th other; the radius query then
        # returns every image tied with it, so the tie rule sees them all
        nearest, _ = tree.query(x[rows], k=k + 1)
        found = tree.query_radius(x[rows], nearest[:, k] + 1e-9)
        return [counts.rank(row, found[i], counts.squared(row, found[i]), k) for i, row in enumerate(rows)]

    chunks = [np.arange(s, min(s + chunk_size, len(counts))) for s in range(0, len(counts), chunk_size)]
    result = _chunked(counts, k, chunks, checkpoints, query_chunk)
    logger.info("%d nearest neighbours of %d images found with a BallTree", k, len(counts))
    return result


def sparse_neighbours(counts, k=5, chunk_size=1024, max_products=20_000_000, checkpoints=None):
    """The k nearest other images of every image, exactly, from sparse products.

    For a chunk of query rows, the sparse product of their counts with all counts gives the
    dot products with every image, and from them the exact integer S to every image; the k
    smallest are found by a partition, and only the images tied with the k-th are ranked
    by the tie rule. Chunks hold at most ``max_products`` query x image pairs (8 bytes
    each, 160 MB by default) and ``chunk_size`` rows, which bounds the memory whatever the
    collection size.

    Parameters and returns as :func:`balltree_neighbours`.
    """
    n = len(counts)
    _check_k(k, n)
    transposed = counts.counts.T.tocsr()
    rows_per_chunk = max(1, min(chunk_size, max_products // n))
    chunks = [np.arange(s, min(s + rows_per_chunk, n)) for s in range(0, n, rows_per_chunk)]
    never = np.iinfo(np.int64).max

    def query_chunk(rows):
        dots = (counts.counts[rows] @ transposed).toarray()
        squared = counts.norms[rows, None] + counts.norms[None, :] - 2 * dots
        squared[np.arange(len(rows)), rows] = never  # an image is not its own neighbour
        kth = np.partition(squared, k - 1, axis=1)[:, k - 1]
        ranked = []
        for i, row in enumerate(rows):
            candidates = np.flatnonzero(squared[i] <= kth[i])
            ranked.append(counts.rank(row, candidates, squared[i, candidates], k))
        return ranked

    result = _chunked(counts, k, chunks, checkpoints, query_chunk)
    logger.info("%d nearest neighbours of %d images found by sparse products", k, n)
    return result


def nearest_neighbours(counts, k=5, method="auto", checkpoints=None):
    """The k nearest other images of every image, by ``method`` (see METHODS and AUTO_MAX_TREE_WORDS)."""
    if method not in METHODS:
        raise ConfigError(f"[neighbours] method={method!r} must be one of {', '.join(METHODS)}")
    if method == "auto":
        method = "balltree" if counts.counts.shape[1] <= AUTO_MAX_TREE_WORDS else "sparse"
    find = balltree_neighbours if method == "balltree" else sparse_neighbours
    return find(counts, k=k, checkpoints=checkpoints)
