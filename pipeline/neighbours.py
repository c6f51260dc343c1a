"""Nearest neighbours of every image among the others, with one deterministic tie rule."""

import logging

import numpy as np
from sklearn.neighbors import BallTree

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: Distances are compared after rounding to this many decimals; equal ones are ordered by database ID.
TIE_DECIMALS = 9


def rank_candidates(query, candidates, distances, id_rank, k):
    """Order one query's candidates by (distance rounded to 1e-9, database ID), drop the query itself.

    Returns
    -------
    neighbours : ndarray of shape (k,), int64 positions
    distances : ndarray of shape (k,), float64, rounded
    """
    keep = candidates != query
    candidates, distances = candidates[keep], np.round(distances[keep], TIE_DECIMALS)
    order = np.lexsort((id_rank[candidates], distances))[:k]
    return candidates[order], distances[order]


def balltree_neighbours(histograms, ids, k=5, leaf_size=40, chunk_size=1024, checkpoints=None):
    """The k nearest other images of every image, by Euclidean distance between histograms.

    Ties (common: histograms count out of n_local) are broken by ascending database ID, and
    an image is never its own neighbour, even when another image has the same histogram.

    Parameters
    ----------
    histograms : ndarray or sparse matrix of shape (n_images, K)
    ids : ndarray of shape (n_images,)
        Database IDs, for the tie rule.
    k : int
    checkpoints : Checkpoints, optional
        Where the neighbours of each chunk of query rows are committed, so a killed run
        resumes after the last committed chunk.

    Returns
    -------
    neighbours : ndarray of shape (n_images, k), int64 positions, nearest first
    distances : ndarray of shape (n_images, k), float64, non-decreasing along each row
    """
    n = histograms.shape[0]
    if not 1 <= k <= n - 1:
        raise ConfigError(f"[neighbours] k={k} must be between 1 and the number of images - 1 = {n - 1}")
    x = histograms.toarray() if hasattr(histograms, "toarray") else np.asarray(histograms, dtype=np.float64)
    tree = BallTree(x, leaf_size=leaf_size)
    id_rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable")
    neighbours = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float64)
    for c, start in enumerate(range(0, n, chunk_size)):
        rows = np.arange(start, min(start + chunk_size, n))
        saved = checkpoints.load(c) if checkpoints else None
        if saved is None:
            # the (k+1)-th distance, self included, bounds the k-th other; the radius query then
            # returns every image tied with it, so the tie rule sees them all
            nearest, _ = tree.query(x[rows], k=k + 1)
            radius = nearest[:, k] + 2 * 10.0**-TIE_DECIMALS
            found, found_distances = tree.query_radius(x[rows], radius, return_distance=True)
            ranked = [rank_candidates(row, found[i], found_distances[i], id_rank, k) for i, row in enumerate(rows)]
            saved = {"neighbours": np.array([r[0] for r in ranked]), "distances": np.array([r[1] for r in ranked])}
            if checkpoints:
                checkpoints.save(c, saved)
        neighbours[rows], distances[rows] = saved["neighbours"], saved["distances"]
    logger.info("%d nearest neighbours of %d images found with a BallTree", k, n)
    return neighbours, distances
