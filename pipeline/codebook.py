"""The visual-word codebook: k-means over a seeded sample of reduced descriptors."""

import logging
import math

import h5py
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: Upper bound of the automatic codebook size; the size the original project used.
MAX_AUTO_SIZE = 8500


def auto_size(n_descriptors):
    """The codebook size ``size = auto`` picks: the square root of the number of descriptors
    fitted on, between 2 and 8,500 (about 49 words for 50 images, 7,000 for a million)."""
    return int(min(MAX_AUTO_SIZE, max(2, round(math.sqrt(n_descriptors)))))


def resolve_size(size, n_descriptors):
    """Turn the ``[codebook] size`` setting into a number of words, checked against the data."""
    if str(size).strip().lower() == "auto":
        return auto_size(n_descriptors)
    try:
        k = int(size)
    except ValueError:
        raise ConfigError(f"[codebook] size={size!r} must be a whole number or auto") from None
    if not 2 <= k <= n_descriptors:
        raise ConfigError(
            f"[codebook] size={k} must be between 2 and the number of sampled descriptors={n_descriptors}; "
            "lower it or use auto"
        )
    return k


def sample_positions(n_images, n_local, sample_size, random_state):
    """Choose which descriptors the codebook is fitted on.

    Returns
    -------
    take : ndarray of shape (n_images, n_local), bool
        All descriptors when there are at most ``sample_size``, else a uniform sample of that many.
    """
    take = np.zeros(n_images * n_local, dtype=bool)
    if n_images * n_local <= sample_size:
        take[:] = True
    else:
        rng = np.random.default_rng(random_state)
        take[rng.choice(n_images * n_local, size=sample_size, replace=False)] = True
    return take.reshape(n_images, n_local)


class Codebook:
    """k-means visual words.

    Parameters
    ----------
    size : int
        Number of visual words K.
    random_state : int
        Seed of the k-means++ initialisation.
    """

    def __init__(self, size, random_state=0):
        self.size = size
        self.random_state = random_state

    def fit(self, x):
        """Fit on reduced descriptors of shape (n, d); returns self."""
        kmeans = KMeans(n_clusters=self.size, n_init=1, random_state=self.random_state).fit(x)
        self.centers_ = kmeans.cluster_centers_.astype(np.float32)
        self.inertia_ = float(kmeans.inertia_)
        logger.info("codebook of %d words fitted on %d descriptors in %d iterations", self.size, len(x), kmeans.n_iter_)
        return self

    def predict(self, x):
        """Nearest visual word of each descriptor: ndarray of shape (n,), int64."""
        return pairwise_distances_argmin(np.asarray(x, dtype=np.float32), self.centers_).astype(np.int64)

    def save(self, path, attrs):
        with h5py.File(path, "w") as f:
            f.attrs.update(attrs)
            f.attrs["size"] = self.size
            f.attrs["random_state"] = self.random_state
            f.attrs["inertia"] = self.inertia_
            f.create_dataset("centers", data=self.centers_)

    @classmethod
    def load(cls, path):
        with h5py.File(path, "r") as f:
            codebook = cls(size=int(f.attrs["size"]), random_state=int(f.attrs["random_state"]))
            codebook.centers_ = f["centers"][:]
            codebook.inertia_ = float(f.attrs["inertia"])
        return codebook


def fit_codebook(blocks, reducer, size, sample_size, random_state):
    """Fit the codebook on a seeded uniform sample of the reduced descriptors.

    Parameters
    ----------
    blocks : DescriptorBlocks or ArrayBlocks
        The descriptors, block by block; blocks without a sampled descriptor are not read.
    reducer : Reducer
    size : int or "auto"
    sample_size : int
        Most descriptors k-means sees; memory stays bounded by it whatever the collection size.
    random_state : int

    Returns
    -------
    Codebook
    """
    n_images = sum(len(blocks.positions(i)) for i in range(len(blocks)))
    take = sample_positions(n_images, blocks.n_local(), sample_size, random_state)
    sample = []
    for i in range(len(blocks)):
        chosen = take[blocks.positions(i)]
        if chosen.any():
            sample.append(reducer.transform(blocks[i][chosen].astype(np.float32)))
    sample = np.concatenate(sample)
    return Codebook(resolve_size(size, len(sample)), random_state).fit(sample)
