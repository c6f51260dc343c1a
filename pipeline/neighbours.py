"""Nearest neighbours of every image among the others: a BallTree and an exact sparse method,
with one deterministic tie rule, for the Euclidean and the cosine distance of raw or tf-idf
weighted visual-word histograms.

Each image is a vector of integers: its count of each visual word, raised to ``power`` (in
steps of 1/POWER_SCALE when below 1), times the word's integer weight (1 for ``raw``; for
``tfidf``, the word's inverse document frequency in steps of 1/IDF_SCALE). Every distance is computed from the exact integer dot products and squared
norms of these vectors with one formula: the Euclidean key is the integer
S = |a|^2 + |b|^2 - 2 a.b, the cosine key 1 - a.b / (|a| |b|) in float64. Both methods find
candidates their own way and rank them by that key, then by ascending database ID: ties,
which are common, are broken the same way by both, and their results are identical.
"""

import copy
import dataclasses
import logging
import math

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import BallTree

from .errors import ConfigError
from .records import limited_best, record_best

logger = logging.getLogger(__name__)

METHODS = ("auto", "balltree", "sparse")
WEIGHTINGS = ("raw", "tfidf")
METRICS = ("euclidean", "cosine")
#: The shipped ``[neighbours] weighting`` and ``metric`` (docs/quality.md says why).
DEFAULT_WEIGHTING, DEFAULT_METRIC = "tfidf", "cosine"
#: tf-idf weights are whole multiples of 1 / IDF_SCALE, so that products stay exact integers.
IDF_SCALE = 256
#: Counts raised to a power below 1 are whole multiples of 1 / POWER_SCALE, for the same reason.
POWER_SCALE = 64
#: The shipped ``[neighbours] power`` (docs/quality.md says why).
DEFAULT_POWER = 0.5


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


def power_table(mass, power):
    """Integer value of each count 0..mass raised to ``power`` in (0, 1]: the count itself for 1,
    else round(POWER_SCALE * count**power) (0.5: the square root, Hellinger's kernel with cosine)."""
    if not 0 < power <= 1:
        raise ConfigError(
            f"[neighbours] power={power} must be in (0, 1]; 1 keeps the counts, 0.5 takes their square root"
        )
    counts = np.arange(mass + 1, dtype=np.float64)
    if power == 1:
        return counts.astype(np.int64)
    return np.rint(POWER_SCALE * counts**power).astype(np.int64)


#: What ``method = auto`` takes. Measured with ``python -m benchmarks.neighbours`` (word
#: frequencies as rank**-0.6, 49 descriptors per image, 2 cores): at 20,000 images the sparse
#: method beat the BallTree at every codebook size tried, 2 words (1.5 s against 5.7 s),
#: 4 (2.2 / 4.8), 8 (4.6 / 9.7), 16 (7.5 / 18.2) and 8,500 (docs/performance.md).
AUTO_METHOD = "sparse"
#: Accumulator entries the sparse method checks at once against its bound.
GROUP = 64
#: Words found in more than this share of the images are accumulated from a dense row of
#: counts (n_images int16) instead of their posting list: cheaper from about 1 in 40 images
#: on (``python -m benchmarks.neighbours``). Words this frequent number at most
#: n_local / DENSE_SHARE, about 116 with the measured word profile.
DENSE_SHARE = 0.03


def check_weighting(weighting):
    """Raise ConfigError unless ``weighting`` is one of WEIGHTINGS."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"[neighbours] weighting={weighting!r} must be one of {', '.join(WEIGHTINGS)}")


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
    check_weighting(weighting)
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
        if metric not in METRICS:
            raise ConfigError(f"[neighbours] metric={metric!r} must be one of {', '.join(METRICS)}")
        counts = sp.csr_matrix(counts, dtype=np.int64)
        self.weighting, self.metric, self.n_local, self.power = weighting, metric, n_local, power
        self.cosine = metric == "cosine"
        self.table = power_table(n_local, power)
        check_weighting(weighting)
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

    def release_inverted_files(self):
        """Drop the inverted files kept by :meth:`inverted_file` (the largest part of a search's
        memory); a later search makes them again."""
        self._inverted_files.clear()

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
        """Similarity in percent: 100 x (1 - distance / :meth:`max_distance`), so 100 for the same
        histogram and 0 for the farthest two images can be; for cosine, 100 x the cosine similarity."""
        return np.clip(100.0 * (1.0 - np.asarray(distances) / self.max_distance()), 0.0, 100.0)

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
def _key(cosine, dot, norm_a, norm_b, root_a, root_b):
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
    post_img,
    post_cnt,
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
                    else:
                        for e in range(block_ptr[w, tb], block_ptr[w, tb + 1]):
                            dots[post_img[e]] += c * post_cnt[e]
                # images sharing no word with a: the best of them are among ``best_sharing_no_word``
                for b in best_sharing_no_word:
                    if (
                        first <= b < first + size
                        and dots[b - first] == 0
                        and c_records[b] != record
                        and not _skipped(skip_idx, skip_start, skip_end, b)
                    ):
                        s = _key(cosine, 0, norm_a, norms[b], root_a, roots[b])
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
                            s = _key(cosine, dots[j], norm_a, norms[b], root_a, roots[b])
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
def _fill_postings(indptr, indices, data, dense_row, dense, word_start, block, n_blocks):
    """The postings of the CSR rows, word by word in image order (see :func:`_inverted_file`),
    in two passes over the rows: no transposed copy of the counts."""
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
    post_img = np.empty(word_start[-1], dtype=np.int32)
    post_cnt = np.empty(word_start[-1], dtype=np.int32)
    for i in range(len(indptr) - 1):
        for p in range(indptr[i], indptr[i + 1]):
            w = indices[p]
            if dense_row[w] < 0:
                post_img[cursor[w]], post_cnt[cursor[w]] = i % block, data[p]
                cursor[w] += 1
    return block_ptr, post_img, post_cnt


def _inverted_file(csr, block, dense_share):
    """The inverted file of the counts, cut into blocks of ``block`` images.

    Returns
    -------
    block_ptr : ndarray of shape (K, n_blocks + 1), int64
        Where block tb of the images starts in the posting list of word w (empty for dense words).
    post_img, post_cnt : ndarray of shape (n_postings,), int32
        Image position within its block, and weighted count, of each posting, word by word.
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
    indptr = csr.indptr.astype(np.int64, copy=False)
    block_ptr, post_img, post_cnt = _fill_postings(
        indptr, csr.indices, csr.data, dense_row, dense, word_start, block, -(-n // block)
    )
    return block_ptr, post_img, post_cnt, dense_row, dense


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
            *_inverted_file(vectors, block, dense_share),
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
def _list_keys(rows, listed, indptr, indices, data, norms, roots, cosine):
    """The key of each image of ``rows`` with each of its ``listed`` images (CSR rows with sorted indices)."""
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
            keys[i, j] = _key(cosine, dot, norms[a], norms[b], roots[a], roots[b])
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
    keys = _list_keys(rows[kept], listed, v.indptr, v.indices, v.data, counts.norms, counts.roots, counts.cosine)
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
    if method not in METHODS:
        raise ConfigError(f"[neighbours] method={method!r} must be one of {', '.join(METHODS)}")
    if method == "auto":
        method = AUTO_METHOD
    if method == "balltree":
        return balltree_neighbours(counts, k=k, rows=rows, checkpoints=checkpoints, progress=progress, own=own)
    return sparse_neighbours(counts, k=k, rows=rows, checkpoints=checkpoints, progress=progress, own=own)
