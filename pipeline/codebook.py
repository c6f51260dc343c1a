"""The visual-word codebook: k-means over a seeded sample of reduced descriptors, and the
document frequency of each word in that sample, which the word weights are made from."""

import logging

import h5py
import numba
import numpy as np
from sklearn.cluster import KMeans

from .blocks import sample_images
from .errors import ConfigError, named
from .h5io import create
from .histograms import images_per_thread, word_histograms
from .settings import MAX_ASSIGN, Codebook
from .threads import by_rows
from .weighting import word_weights

logger = logging.getLogger(__name__)

#: Upper bound of the automatic codebook size; the size the original project used.
MAX_AUTO_SIZE = 8500
#: Sampled descriptors per visual word that ``size = auto`` aims at. On the quality benchmark's
#: proxy collections (docs/quality.md), mAP rose with K up to 1,600-3,200 words at about 15,000
#: descriptors (one word per 5 to 10) and still at 6,400-8,500 at 147,000 (one per 17 to 23).
DESCRIPTORS_PER_WORD = 8
#: Default of ``[codebook] sample_size``: most descriptors k-means is fitted on.
DEFAULT_SAMPLE_SIZE = Codebook.sample_size
#: Components of each descriptor scored by a matrix product before the rest is bounded
#: (:meth:`Codebook.nearest`); the first components hold the most variance.
HEAD = 64
#: Share of the words past which a descriptor's bound is too loose and its whole product is made.
SURVIVORS = 1 / 32
#: How a codebook is made and stored; part of the Codebook stage's settings, so a change refits.
#: 2: random initialisation, and the document frequencies the word weights are made from.
FORMAT = 2


def auto_size(n_descriptors):
    """The codebook size ``size = auto`` picks: one word per DESCRIPTORS_PER_WORD descriptors
    fitted on, between 2 and 8,500 (about 1,900 words for 300 images of 49 descriptors;
    8,500 from 68,000 descriptors on, about 1,400 images)."""
    return int(min(MAX_AUTO_SIZE, max(2, round(n_descriptors / DESCRIPTORS_PER_WORD))))


def resolve_size(size, n_descriptors):
    """Turn the ``[codebook] size`` setting into a number of words, checked against the data."""
    if str(size).strip().lower() == "auto":
        return auto_size(n_descriptors)
    try:
        k = int(size)
    except ValueError:
        raise ConfigError(f"{named('codebook_size')}={size!r} must be a whole number or auto") from None
    if not 2 <= k <= n_descriptors:
        raise ConfigError(
            f"{named('codebook_size')}={k} must be between 2 and the number of sampled descriptors={n_descriptors}; "
            "lower it or use auto"
        )
    return k


class Codebook:
    """k-means visual words, with the document frequency of each word in the images fitted on.

    Parameters
    ----------
    size : int
        Number of visual words K.
    random_state : int
        Seed of the initialisation: K distinct descriptors drawn at random (see :meth:`fit`).

    Attributes
    ----------
    centers_ : ndarray of shape (K, d), float32
    document_frequency_ : ndarray of shape (MAX_ASSIGN, K), int64
        Row m - 1: how many of the images fitted on have a descriptor that counts for the word
        with ``[histograms] assign = m``; the tf-idf weights are made from it
        (:meth:`word_weights`), so they stay as they are until the codebook is refitted.
    documents_ : int
        Images fitted on.
    """

    def __init__(self, size, random_state=0):
        self.size = size
        self.random_state = random_state

    def fit(self, x, n_local=None):
        """Fit on reduced descriptors of shape (n, d), image after image when ``n_local`` (each
        image's descriptors) is given, else one image each; returns self.

        Initialised with K distinct descriptors drawn at random, then Lloyd's iterations to
        convergence: k-means++ gave the same retrieval quality on the quality benchmark and its
        K sequential passes over the sample cost six times the whole fit at 8,500 words
        (docs/quality.md)."""
        kmeans = KMeans(n_clusters=self.size, init="random", n_init=1, random_state=self.random_state).fit(x)
        self.centers_ = kmeans.cluster_centers_.astype(np.float32)
        self.inertia_ = float(kmeans.inertia_)
        logger.info("codebook of %d words fitted on %d descriptors in %d iterations", self.size, len(x), kmeans.n_iter_)
        n_local = n_local or 1
        self.documents_ = len(x) // n_local
        nearest = by_rows(lambda part: self.nearest(part, MAX_ASSIGN), x)  # the m nearest lead the MAX_ASSIGN
        self.document_frequency_ = np.array(
            [
                document_frequency(nearest[:, :m].reshape(self.documents_, -1), self.size)
                for m in range(1, MAX_ASSIGN + 1)
            ]
        )
        return self

    def word_weights(self, weighting, assign):
        """The integer word weights of ``weighting`` for histograms made with ``assign``
        (:func:`pipeline.weighting.word_weights`), from the images the codebook was fitted on."""
        return word_weights(self.document_frequency_[assign - 1], self.documents_, weighting)

    def predict(self, x):
        """Nearest visual word of each descriptor: ndarray of shape (n,), int64."""
        return self.nearest(x, 1)[:, 0]

    def nearest(self, x, m, chunk_size=256, head=HEAD):
        """The ``m`` nearest visual words of each descriptor, nearest first (ties by word number).

        The words are bounded before they are scored: one float32 matrix product over the first
        ``head`` components (those of the most variance), with two more columns, gives each
        word's score x . c - |c|^2 / 2 but for the rest, plus |x_rest| |c_rest|, which bounds
        the rest by Cauchy-Schwarz. Only the words whose upper bound reaches the m-th best exact
        score among the words of the highest bounds can be among the m nearest: they are ordered
        by their exact squared distance (float64, :func:`_nearest_rows`). A descriptor whose
        bound leaves more than ``max(GROUP, K * SURVIVORS)`` words is scored over every component,
        and its words within float32's rounding of the m-th best settled the same way. Either
        way the result is the exact nearest words, whatever the chunk or ``head``. One thread:
        the histograms split their descriptors among the cores (:func:`pipeline.threads.by_rows`).

        Returns
        -------
        words : ndarray of shape (n, m), int64
        """
        x = np.asarray(x, dtype=np.float32)
        centers, half32, bounding, largest = self._words(head)
        m, h = min(m, len(centers)), bounding.shape[0] - 2
        # every float32 bound lies within margin of its exact value: the product's gamma_d times
        # the sum of its terms' magnitudes, at most |x| |c| + |c|^2 / 2, and the float32 roundings
        # of |c|^2 / 2, |x_rest| and |c_rest| (rounded up), each at most u of that: 16 u, amply
        u = 2.0**-24
        gamma = x.shape[1] * u / (1 - x.shape[1] * u)
        limit, half_max = max(GROUP, int(len(centers) * SURVIVORS)), float(half32.max())
        words = np.empty((len(x), m), dtype=np.int64)
        rows = min(chunk_size, len(x))
        scores = np.empty((rows, len(centers)), dtype=np.float32)  # one buffer: no pages mapped per chunk
        augmented = np.empty((rows, h + 2), dtype=np.float32)
        augmented[:, h] = 1
        for start in range(0, len(x), chunk_size):
            part = x[start : start + chunk_size]
            n = len(part)
            wide = part.astype(np.float64)
            squares = np.einsum("ij,ij->i", wide, wide)
            augmented[:n, :h] = part[:, :h]
            augmented[:n, h + 1] = np.sqrt(np.einsum("ij,ij->i", wide[:, h:], wide[:, h:]))
            # float64's rounding of the exact scores, amply, as well
            slack = (gamma + 16 * u) * (np.sqrt(squares) * largest + half_max) + 1e-9 * (squares + 2 * half_max + 1)
            np.matmul(augmented[:n], bounding, out=scores[:n])
            out = words[start : start + chunk_size]
            undecided = np.flatnonzero(_nearest_rows(scores[:n], slack, part, squares, centers, out, limit))
            if len(undecided):  # every component for these: no bound on the rest
                whole = part[undecided] @ centers.T - half32
                settled = np.empty((len(undecided), m), dtype=np.int64)
                _nearest_rows(
                    whole, slack[undecided], part[undecided], squares[undecided], centers, settled, len(centers)
                )
                out[undecided] = settled
        return words

    def _words(self, head):
        """The words in float32, |c|^2 / 2 in float32, the bounds' matrix of ``head`` (the words'
        first ``head`` components, -|c|^2 / 2 and |c_rest| rounded up, as columns of shape
        (head + 2, K)) and the largest |c|: made once per codebook and head."""
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] is not self.centers_:
            centers = np.ascontiguousarray(self.centers_, dtype=np.float32)
            wide = centers.astype(np.float64)
            half = 0.5 * np.einsum("ij,ij->i", wide, wide)
            largest = float(np.sqrt(2 * half.max())) if len(half) else 0.0
            kept = self.__dict__["_kept"] = (self.centers_, (centers, half.astype(np.float32), largest), {})
        centers, half32, largest = kept[1]
        heads = kept[2]
        if head not in heads:
            h = min(head, centers.shape[1])
            rest = centers[:, h:].astype(np.float64)
            rest_norms = np.nextafter(np.sqrt(np.einsum("ij,ij->i", rest, rest)).astype(np.float32), np.float32(np.inf))
            heads[head] = np.ascontiguousarray(np.vstack([centers[:, :h].T, -half32, rest_norms]))
        return centers, half32, heads[head], largest

    def save(self, path, attrs):
        with create(path) as f:
            f.attrs.update(attrs)
            f.attrs["size"] = self.size
            f.attrs["random_state"] = self.random_state
            f.attrs["inertia"] = self.inertia_
            f.attrs["documents"] = self.documents_
            f.create_dataset("centers", data=self.centers_)
            f.create_dataset("document_frequency", data=self.document_frequency_)

    @classmethod
    def load(cls, path):
        with h5py.File(path, "r") as f:
            codebook = cls(size=int(f.attrs["size"]), random_state=int(f.attrs["random_state"]))
            codebook.centers_ = f["centers"][:]
            codebook.inertia_ = float(f.attrs["inertia"])
            codebook.documents_ = int(f.attrs["documents"])
            codebook.document_frequency_ = f["document_frequency"][:]
        return codebook


#: Bounds scanned per group for its best: the groups whose best cannot reach the m-th best word
#: are passed over as one comparison.
GROUP = 16


@numba.njit(nogil=True, cache=True, fastmath=True)
def _group_tops(scores, groups):
    """The best score of each GROUP of words into ``groups``."""
    k = len(scores)
    for g in range(k // GROUP):
        top = scores[g * GROUP]
        for j in range(g * GROUP + 1, g * GROUP + GROUP):
            top = max(top, scores[j])
        groups[g] = top
    if k % GROUP:
        top = scores[k - k % GROUP]
        for j in range(k - k % GROUP, k):
            top = max(top, scores[j])
        groups[k // GROUP] = top


@numba.njit(nogil=True, cache=True)
def _insert(value, key, values, keys):
    """Insert (value, key) into the ascending (value, key) pairs ``values``, ``keys`` if it is
    smaller than the last, which it pushes out."""
    m = len(values)
    if value > values[m - 1] or (value == values[m - 1] and key >= keys[m - 1]):
        return
    p = m - 1
    while p > 0 and (values[p - 1] > value or (values[p - 1] == value and keys[p - 1] > key)):
        values[p], keys[p] = values[p - 1], keys[p - 1]
        p -= 1
    values[p], keys[p] = value, key


@numba.njit(nogil=True, cache=True)
def _distance(x, center):
    """The squared distance in float64, summed in four lanes in a fixed order (the same on every
    machine: no vectorising reorders it)."""
    a0 = a1 = a2 = a3 = 0.0
    d = len(x)
    c = 0
    while c + 4 <= d:
        e0 = np.float64(x[c]) - np.float64(center[c])
        e1 = np.float64(x[c + 1]) - np.float64(center[c + 1])
        e2 = np.float64(x[c + 2]) - np.float64(center[c + 2])
        e3 = np.float64(x[c + 3]) - np.float64(center[c + 3])
        a0 += e0 * e0
        a1 += e1 * e1
        a2 += e2 * e2
        a3 += e3 * e3
        c += 4
    while c < d:
        e0 = np.float64(x[c]) - np.float64(center[c])
        a0 += e0 * e0
        c += 1
    return (a0 + a1) + (a2 + a3)


@numba.njit(nogil=True, cache=True)
def _nearest_rows(scores, slack, part, squares, centers, words, limit):
    """Each row's m = ``words.shape[1]`` nearest words, nearest first, ties by word number, from
    ``scores`` that bound every word's exact score x . c - |c|^2 / 2 from above once the row's
    ``slack`` is added (:meth:`Codebook.nearest`; the slack covers float64's rounding of the
    exact scores too).

    The m words of the highest bounds have exact scores (|x|^2, ``squares``, less their exact
    squared distance, halved); the least of them, s, is at most the m-th best exact score, so a
    word whose bound is below s cannot be among the m nearest. The others are ordered by their
    exact squared distance. Rows that leave more than ``limit`` words are left to the caller:
    returns True for each of them."""
    n, k = scores.shape
    m = words.shape[1]
    groups = np.empty((k + GROUP - 1) // GROUP, dtype=np.float32)
    top = np.empty(m, dtype=np.float32)  # negated, so ascending: the m highest bounds
    slot = np.zeros(m, dtype=np.int64)
    distance = np.empty(m, dtype=np.float64)
    nearest = np.empty(m, dtype=np.int64)
    undecided = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        x, row = part[i], scores[i]
        _group_tops(row, groups)
        top[:] = np.inf
        for g in range(len(groups)):
            if -groups[g] < top[m - 1]:
                _insert(-groups[g], g, top, slot)
        reach = -top[m - 1]  # the m highest bounds lie in the groups whose best reaches it
        top[:] = np.inf
        for g in range(len(groups)):
            if groups[g] >= reach:
                for j in range(g * GROUP, min(g * GROUP + GROUP, k)):
                    _insert(-row[j], j, top, slot)
        norm = squares[i]
        least = np.inf
        for p in range(m):
            least = min(least, 0.5 * (norm - _distance(x, centers[slot[p]])))
        least -= slack[i]  # the bounds' margin, and float64's rounding of the exact scores
        survivors = 0
        for g in range(len(groups)):
            if groups[g] >= least:
                for j in range(g * GROUP, min(g * GROUP + GROUP, k)):
                    survivors += row[j] >= least
        if survivors > limit:
            undecided[i] = True
            continue
        distance[:] = np.inf
        nearest[:] = k
        for g in range(len(groups)):
            if groups[g] >= least:
                for j in range(g * GROUP, min(g * GROUP + GROUP, k)):
                    if row[j] >= least:
                        _insert(_distance(x, centers[j]), j, distance, nearest)
        words[i, :] = nearest
    return undecided


def document_frequency(words, size):
    """How many images have each word: ``words`` of shape (n_images, n), ndarray of shape (size,), int64."""
    return np.bincount(word_histograms(words, size).indices, minlength=size).astype(np.int64)


def _sample_images(n_local, sample_size):
    return max(1, sample_size // n_local)


def sampled_descriptors(n_images, n_local, sample_size):
    """How many descriptors :func:`fit_codebook` fits on for a collection of ``n_images`` images."""
    return min(n_images, _sample_images(n_local, sample_size)) * n_local


def check_size(size, n_images, n_local, sample_size):
    """Raise ConfigError when ``size`` cannot be fitted on the descriptors a collection of
    ``n_images`` images would give :func:`fit_codebook` (before any extraction); return the
    number of words it gives."""
    return resolve_size(size, sampled_descriptors(n_images, n_local, sample_size))


def fit_codebook(blocks, reducer, size, sample_size, random_state):
    """Fit the codebook on the reduced descriptors of a seeded uniform sample of images.

    Parameters
    ----------
    blocks : Blocks
        The descriptors; only the sampled images are read.
    reducer : Reducer
    size : int or "auto"
    sample_size : int
        Most descriptors k-means sees, taken as whole images: sample_size // n_local images
        (at least one). Memory and reading stay bounded by it whatever the collection size.
    random_state : int
        Seed of the sample and of k-means.

    Returns
    -------
    Codebook
    """
    n_local = blocks.n_local()
    chosen = blocks.subset(sample_images(blocks.n_images, _sample_images(n_local, sample_size), random_state))
    sample = np.concatenate(
        [by_rows(reducer.transform, b, images_per_thread(n_local)).reshape(-1, reducer.n_components_) for b in chosen]
    )
    return Codebook(resolve_size(size, len(sample)), random_state).fit(sample, n_local)
