"""The weighted visual-word histograms the neighbours are found between: raw or tf-idf word
weights, counts raised to a power, in exact integers (the invariant :mod:`pipeline.neighbours`
states), and the Euclidean or cosine distance between them."""

import copy
import dataclasses
import logging

import numpy as np
import scipy.sparse as sp

from .inverted import DENSE_SHARE, InvertedFile
from .settings import Neighbours

logger = logging.getLogger(__name__)

#: The shipped ``[neighbours] weighting`` and ``metric`` (docs/quality.md says why).
DEFAULT_WEIGHTING, DEFAULT_METRIC = Neighbours.weighting, Neighbours.metric
#: tf-idf weights are whole multiples of 1 / IDF_SCALE, so that products stay exact integers.
IDF_SCALE = 256
#: Counts raised to a power below 1 are whole multiples of 1 / POWER_SCALE, for the same reason.
POWER_SCALE = 64
#: The shipped ``[neighbours] power`` (docs/quality.md says why).
DEFAULT_POWER = Neighbours.power


@dataclasses.dataclass(frozen=True)
class Distance:
    """How word counts are weighted and compared (``[neighbours] weighting``, ``metric`` and
    ``power``); the shipped ones by default."""

    weighting: str = DEFAULT_WEIGHTING
    metric: str = DEFAULT_METRIC
    power: float = DEFAULT_POWER

    def __str__(self):
        return f"{self.weighting}/{self.metric}, power {self.power:g}"

    @classmethod
    def recorded(cls, attrs):
        """The distance a similarities file's attributes record (raw Euclidean counts for a file
        from before these settings were recorded)."""
        return cls(attrs.get("weighting", "raw"), attrs.get("metric", "euclidean"), float(attrs.get("power", 1.0)))


def similarity(distances, max_distance=1.0):
    """Similarity in percent: 100 x (1 - distance / ``max_distance``), the largest distance two images
    can have (:meth:`WeightedHistograms.max_distance`), so 100 for the same histogram and 0 for the
    farthest two images can be; for cosine, 100 x the cosine similarity."""
    return np.clip(100.0 * (1.0 - np.asarray(distances, dtype=np.float64) / max_distance), 0.0, 100.0)


def power_table(mass, power):
    """Integer value of each count 0..mass raised to ``power`` in (0, 1]: the count itself for 1,
    else round(POWER_SCALE * count**power) (0.5: the square root, Hellinger's kernel with cosine)."""
    Neighbours.check("power", power)
    counts = np.arange(mass + 1, dtype=np.float64)
    if power == 1:
        return counts.astype(np.int64)
    return np.rint(POWER_SCALE * counts**power).astype(np.int64)


def word_weights(document_frequency, n_images, weighting):
    """Integer weight of each visual word: 1 for ``raw``; for ``tfidf`` the smoothed inverse
    document frequency ln((1 + n) / (1 + df)) + 1 (as scikit-learn's TfidfTransformer; at
    least 1, so no image loses every word) times IDF_SCALE, rounded.

    Parameters
    ----------
    document_frequency : ndarray of shape (K,), int
        Images that have each word, among ``n_images``.
    weighting : {"raw", "tfidf"}

    Returns
    -------
    weights : ndarray of shape (K,), int64
    """
    Neighbours.check("weighting", weighting)
    df = np.asarray(document_frequency, dtype=np.int64)
    if weighting == "raw":
        return np.ones(len(df), dtype=np.int64)
    return np.rint((np.log((1 + n_images) / (1 + df)) + 1) * IDF_SCALE).astype(np.int64)


def counts_weights(counts, weighting):
    """The word weights of ``weighting`` from the images of ``counts`` (sparse, (n_images, K)) themselves."""
    counts = sp.csr_matrix(counts)
    return word_weights(np.bincount(counts.indices, minlength=counts.shape[1]), counts.shape[0], weighting)


class WeightedHistograms:
    """Visual-word counts, weighted, with what the exact distances need.

    Parameters
    ----------
    counts : sparse matrix of shape (n_images, K), integer
    n_local : int
        Each row's sum: descriptors per image times the words each counts for.
    ids : ndarray of shape (n_images,)
        Database IDs, for the tie rule.
    weighting : {"raw", "tfidf"}
        Word weights, see :func:`word_weights` (the shipped DEFAULT_WEIGHTING by default).
    metric : {"euclidean", "cosine"}
        Euclidean distance of the weighted histograms ((counts / n_local) ** power times the
        weights), or one minus their cosine similarity (the shipped DEFAULT_METRIC by default).
    weights : ndarray of shape (K,), optional
        The word weights; by default those of ``weighting`` over the images of ``counts``
        (:func:`counts_weights`). A run's are frozen with its codebook: :meth:`from_codebook`.
    power : float in (0, 1]
        Power the counts are raised to (:func:`power_table`); 1 keeps them (the shipped
        DEFAULT_POWER by default).
    records : array-like of shape (n_images,), optional
        Each image's record (the PPN, or another catalogue key), for searches that limit the
        neighbours from an image's own record; by default each image is a record of its own.

    Attributes
    ----------
    vectors : csr_matrix of shape (n_images, K), int64
        The weighted histograms, exact integers (see the module).
    norms : ndarray of shape (n_images,), int64
        Their squared norms.
    records : ndarray of shape (n_images,), int64
        Each image's record as a number (0, 1, ...: equal for images of the same record).
    """

    def __init__(
        self,
        counts,
        n_local,
        ids,
        weighting=DEFAULT_WEIGHTING,
        metric=DEFAULT_METRIC,
        weights=None,
        power=DEFAULT_POWER,
        records=None,
    ):
        Neighbours.check("metric", metric)
        counts = sp.csr_matrix(counts, dtype=np.int64)
        self.weighting, self.metric, self.n_local, self.power = weighting, metric, n_local, power
        self.cosine = metric == "cosine"
        self.table = power_table(n_local, power)
        Neighbours.check("weighting", weighting)
        self.weights = counts_weights(counts, weighting) if weights is None else np.asarray(weights, dtype=np.int64)
        # the value of an image with all its descriptors on one word of weight 1: the histograms' scale
        self.unit = (1 if weighting == "raw" else IDF_SCALE) * int(self.table[n_local])
        self.vectors = self.weigh(counts)
        self.norms = np.asarray(self.vectors.multiply(self.vectors).sum(axis=1)).ravel().astype(np.int64)
        self.roots = np.sqrt(self.norms.astype(np.float64))
        self.id_rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable")
        n = len(self.norms)
        if records is None:
            self.records = np.arange(n, dtype=np.int64)
        else:
            self.records = np.unique(np.asarray(records), return_inverse=True)[1].astype(np.int64).ravel()
            if len(self.records) != n:
                raise ValueError(f"{len(self.records)} records for {n} images")
        self._inverted_files = {}

    @classmethod
    def from_codebook(cls, counts, n_local, ids, codebook, assign=1, distance=Distance(), records=None):
        """The histograms of a run: ``counts`` made with ``codebook`` and ``assign`` (``n_local``
        descriptors per image), weighted and compared by ``distance`` with the word weights frozen
        with the codebook. Every stage, command and benchmark that compares a run's histograms
        makes them here."""
        return cls(
            counts,
            n_local * assign,
            ids,
            distance.weighting,
            distance.metric,
            power=distance.power,
            weights=codebook.word_weights(distance.weighting, assign),
            records=records,
        )

    @property
    def distance(self):
        """The :class:`Distance` these histograms are compared by."""
        return Distance(self.weighting, self.metric, self.power)

    def __len__(self):
        return self.vectors.shape[0]

    def subset(self, positions):
        """These histograms of the images at ``positions`` only, in that order (the same vectors,
        weights and scale; the tie rule among them unchanged)."""
        part = copy.copy(self)
        part.vectors = self.vectors[positions]
        part.norms, part.roots = self.norms[positions], self.roots[positions]
        part.id_rank, part.records = self.id_rank[positions], self.records[positions]
        part._inverted_files = {}
        return part

    def inverted_file(self, k, block=1 << 15, dense_share=DENSE_SHARE):
        """The :class:`InvertedFile` of all these images for ``k``, made on first use and kept."""
        key = (k, block, dense_share)
        if key not in self._inverted_files:
            self._inverted_files[key] = InvertedFile(self, k, block=block, dense_share=dense_share)
        return self._inverted_files[key]

    def weigh(self, counts):
        """The weighted vectors of counts over the same words: csr_matrix, int64."""
        weighted = sp.csr_matrix(counts, dtype=np.int64, copy=True)
        weighted.sort_indices()
        weighted.data = self.table[weighted.data] * self.weights[weighted.indices]
        return weighted

    def keys(self, dots, norm_a, b=slice(None)):
        """The ranking keys of one image (squared norm ``norm_a``) against the images at positions
        ``b`` (all by default), from their exact dot products ``dots`` (see the module)."""
        if self.metric == "euclidean":
            return (norm_a + self.norms[b] - 2 * dots).astype(np.float64)
        return 1.0 - dots.astype(np.float64) / (np.sqrt(np.float64(norm_a)) * self.roots[b])

    def distances(self, keys):
        """The distances of ranking keys: Euclidean between weighted histograms, or 1 - cosine
        (never negative: for two identical histograms the rounded cosine can exceed 1)."""
        if self.metric == "euclidean":
            return np.sqrt(keys) / self.unit
        return np.maximum(np.asarray(keys, dtype=np.float64), 0.0) + 0.0  # + 0.0 turns -0.0 into 0.0

    def max_distance(self):
        """The largest distance two images can have: 1 for cosine; for Euclidean, two images
        each with every descriptor on one word, the two words of largest weight."""
        if self.metric == "cosine":
            return 1.0
        top = np.sort(self.weights)[-2:].astype(np.float64) * self.table[self.n_local]
        return float(np.sqrt((top**2).sum()) / self.unit)

    def similarity(self, distances):
        """Similarity in percent of ``distances`` (:func:`similarity`)."""
        return similarity(distances, self.max_distance())

    def pair_keys(self, query, candidates):
        """Ranking keys of a query position against candidate positions: ndarray of float64."""
        dots = (self.vectors[candidates] @ self.vectors[query].T).toarray().ravel()
        return self.keys(dots, self.norms[query], candidates)

    def rank(self, query, candidates, keys, k):
        """The k best candidates of one query by (key, database ID), the query itself left out
        (None: an image not in the collection).

        Returns
        -------
        neighbours : ndarray of shape (k,), int64 positions
        distances : ndarray of shape (k,), float64
        """
        if query is not None:
            keep = candidates != query
            candidates, keys = candidates[keep], keys[keep]
        order = np.lexsort((self.id_rank[candidates], keys))[:k]
        return candidates[order], self.distances(keys[order])

    def sharing_no_word_order(self, positions=slice(None)):
        """The images at ``positions`` (numbered among them) in the order of the key they have with
        an image they share no word with, then ID: a query's best among such images come first."""
        if self.metric == "euclidean":
            return np.lexsort((self.id_rank[positions], self.norms[positions]))
        return np.argsort(self.id_rank[positions], kind="stable")
