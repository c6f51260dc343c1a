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
from .histograms import word_histograms
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

    def nearest(self, x, m, chunk_size=256):
        """The ``m`` nearest visual words of each descriptor, nearest first (ties by word number).

        Every word is scored in float32 as x . c - |c|^2 / 2, one matrix product per chunk of
        descriptors (small enough for its scores to stay in cache); the words scoring within
        twice float32's rounding bound of the m-th best are then ordered by their exact squared
        distance (float64, :func:`_settle`), so that rounding never decides between two words:
        the result is the exact nearest words, whatever the chunk. One thread: the histograms
        split their descriptors among the cores (:func:`pipeline.threads.by_rows`).

        Returns
        -------
        words : ndarray of shape (n, m), int64
        """
        x = np.asarray(x, dtype=np.float32)
        centers, transposed, half, half32 = self._words()
        m = min(m, len(centers))
        # each float32 score lies within bound of its exact value: the dot product's
        # gamma_d * |x| |c|, and the rounding of |c|^2 / 2 and of the difference
        u = 2.0**-24
        gamma = x.shape[1] * u / (1 - x.shape[1] * u)
        largest_center = float(np.sqrt(2 * half.max())) if len(half) else 0.0
        words = np.empty((len(x), m), dtype=np.int64)
        for start in range(0, len(x), chunk_size):
            part = x[start : start + chunk_size]
            bound = (gamma + 2 * u) * np.sqrt(np.einsum("ij,ij->i", part, part)) * largest_center + 3 * u * half.max()
            _settle(part @ transposed, half32, part, centers, bound, words[start : start + chunk_size])
        return words

    def _words(self):
        """The words in float32, transposed, and |c|^2 / 2 in float64 and float32: made once per
        codebook (anew when ``centers_`` is set anew)."""
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] is not self.centers_:
            centers = self.centers_.astype(np.float32)
            half = 0.5 * np.einsum("ij,ij->i", centers.astype(np.float64), centers.astype(np.float64))
            kept = self.__dict__["_kept"] = (
                self.centers_,
                (centers, np.ascontiguousarray(centers.T), half, half.astype(np.float32)),
            )
        return kept[1]

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


#: Scores scanned per group for its best: the groups whose best cannot reach the m-th best word
#: are passed over as one comparison.
GROUP = 16


@numba.njit(nogil=True, cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _group_best(row, half, best):
    """The best score ``row[j] - half[j]`` of each GROUP of words, into ``best``."""
    k = len(row)
    for g in range(len(best)):
        top = np.float32(-np.inf)
        for j in range(g * GROUP, min(g * GROUP + GROUP, k)):
            s = row[j] - half[j]
            top = s if s > top else top
        best[g] = top


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
def _settle(products, half, part, centers, bound, words):
    """Each row's m = ``words.shape[1]`` nearest words, nearest first, ties by word number.

    ``products[i, j]`` is the float32 product part[i] . centers[j]; its score less ``half[j]``
    (|c_j|^2 / 2) lies within ``bound[i]`` of the exact score, so every word that may be among
    the m nearest scores at least the m-th best score less 2 ``bound[i]``: those words are
    ordered by their exact squared distance in float64."""
    n, k = products.shape
    m = words.shape[1]
    groups = np.empty((k + GROUP - 1) // GROUP, dtype=np.float32)
    top = np.empty(m, dtype=np.float32)  # negated, so ascending: the m best scores
    slot = np.zeros(m, dtype=np.int64)
    distance = np.empty(m, dtype=np.float64)
    nearest = np.empty(m, dtype=np.int64)
    for i in range(n):
        row = products[i]
        _group_best(row, half, groups)
        top[:] = np.inf
        for g in range(len(groups)):
            _insert(-groups[g], g, top, slot)
        if m > 1:  # the m-th best score lies in the groups whose best reaches the m-th best group's
            reach = -top[m - 1]
            top[:] = np.inf
            for g in range(len(groups)):
                if groups[g] >= reach:
                    for j in range(g * GROUP, min(g * GROUP + GROUP, k)):
                        _insert(-(row[j] - half[j]), j, top, slot)
        threshold = -top[m - 1] - 2 * bound[i]
        distance[:] = np.inf
        nearest[:] = k
        for g in range(len(groups)):
            if groups[g] >= threshold:
                for j in range(g * GROUP, min(g * GROUP + GROUP, k)):
                    if row[j] - half[j] >= threshold:
                        d = 0.0
                        for c in range(part.shape[1]):
                            e = np.float64(part[i, c]) - np.float64(centers[j, c])
                            d += e * e
                        _insert(d, j, distance, nearest)
        words[i, :] = nearest


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
    sample = np.concatenate([by_rows(reducer.transform, b.reshape(-1, b.shape[-1])) for b in chosen])
    return Codebook(resolve_size(size, len(sample)), random_state).fit(sample, n_local)
