"""The map of the collection: every image placed in the unit square so that images whose
histograms are alike lie close, for the web app's zoomable overview.

A :class:`MapLayout` is fitted once per codebook, on a seeded sample: the weighted histograms
(as the neighbours compare them, each scaled to unit length) are reduced to a few dimensions
by a truncated SVD, and a few thousand of the sampled images, the landmarks, are laid out by
t-SNE. Any image is then placed by its histogram alone, at the mean of its nearest landmarks'
places weighted by their similarity, plus a small offset drawn from its database ID so that
copies do not hide one another. So an image keeps its place from night to night while the
codebook does, and a new image needs nothing else; a million images are placed in about 15 s
on 2 cores (the fit, once per codebook, about 10 s).
"""

import logging

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.manifold import TSNE
from sklearn.preprocessing import normalize

from .h5io import create, read_ids, write_ids

logger = logging.getLogger(__name__)

#: Defaults of the layout: SVD dimensions, images the SVD is fitted on, landmarks laid out by
#: t-SNE, the landmarks each image is placed between, and how sharply the nearest one counts.
COMPONENTS, SAMPLE, LANDMARKS, NEAREST, SHARPNESS = 32, 20_000, 2_000, 8, 0.05
#: Largest offset of an image from its place, as a share of the map's side.
JITTER = 0.002
#: Images placed per block (each block's similarities to the landmarks are held at once; a
#: block that fits the caches makes the selection of the nearest landmarks 8 times faster).
BLOCK = 4_096


class MapLayout:
    """The layout of the map (see the module), in scikit-learn's manner.

    Parameters
    ----------
    components, sample, landmarks, nearest, sharpness : see the module's defaults
    random_state : int
    """

    def __init__(
        self,
        components=COMPONENTS,
        sample=SAMPLE,
        landmarks=LANDMARKS,
        nearest=NEAREST,
        sharpness=SHARPNESS,
        random_state=0,
    ):
        self.components = components
        self.sample = sample
        self.landmarks = landmarks
        self.nearest = nearest
        self.sharpness = sharpness
        self.random_state = random_state

    def fit(self, vectors):
        """Fit on the weighted histograms ``vectors`` (sparse, (n_images, K)); returns self."""
        rng = np.random.default_rng(self.random_state)
        n, size = vectors.shape
        sample = np.sort(rng.choice(n, size=min(n, self.sample), replace=False)) if n else np.zeros(0, np.int64)
        x = _unit(vectors[sample])
        dims = max(1, min(self.components, size - 1, len(sample) - 1))
        if len(sample) >= 3 and size >= 2:
            svd = TruncatedSVD(n_components=dims, random_state=self.random_state).fit(x)
            self.components_ = svd.components_.astype(np.float32)
        else:  # too few to reduce: the words themselves, at most ``dims`` of them
            self.components_ = np.eye(dims, size, dtype=np.float32)
        chosen = rng.permutation(len(sample))[: self.landmarks]
        self.landmark_vectors_ = self._reduce(x[chosen])
        self.landmark_xy_ = _unit_square(_tsne(self.landmark_vectors_, self.random_state))
        return self

    def _reduce(self, x):
        return normalize(np.asarray(x @ self.components_.T, dtype=np.float32))

    def transform(self, vectors, ids):
        """The places of images: ndarray of shape (n_images, 2), float32, in [0, 1].

        Parameters
        ----------
        vectors : sparse matrix of shape (n_images, K)
            Their weighted histograms.
        ids : ndarray of shape (n_images,)
            Their database IDs (each image's offset is drawn from its ID).
        """
        n = vectors.shape[0]
        xy = np.empty((n, 2), dtype=np.float32)
        m = len(self.landmark_xy_)
        nearest = min(self.nearest, m)
        for start in range(0, n, BLOCK):
            y = self._reduce(_unit(vectors[start : start + BLOCK]))
            # always BLOCK rows to the product: BLAS sums in an order of its shape's choosing, and an
            # image keeps its place to the last bit whatever the images beside it
            full = np.zeros((BLOCK, y.shape[1]), dtype=y.dtype)
            full[: len(y)] = y
            similarity = (full @ self.landmark_vectors_.T)[: len(y)]
            best = (
                np.argpartition(-similarity, nearest - 1, axis=1)[:, :nearest]
                if nearest < m
                else np.tile(np.arange(m), (len(y), 1))
            )
            s = np.take_along_axis(similarity, best, axis=1)
            weights = np.exp((s - s.max(axis=1, keepdims=True)) / self.sharpness)
            weights /= weights.sum(axis=1, keepdims=True)
            xy[start : start + len(y)] = np.einsum("ij,ijk->ik", weights, self.landmark_xy_[best])
        hashed = pd.util.hash_array(np.asarray(ids).astype(str).astype(object))
        angle = (hashed % 3600).astype(np.float64) * (2 * np.pi / 3600)
        radius = JITTER * ((hashed // 3600) % 1000) / 1000
        xy += np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32) * radius[:, None].astype(np.float32)
        return np.clip(xy, 0.0, 1.0)

    def save(self, path, attrs):
        with create(path) as f:
            f.attrs.update(attrs)
            f.attrs.update(
                components=self.components,
                sample=self.sample,
                landmarks=self.landmarks,
                nearest=self.nearest,
                sharpness=self.sharpness,
                random_state=self.random_state,
            )
            for name in ("components_", "landmark_vectors_", "landmark_xy_"):
                f.create_dataset(name.rstrip("_"), data=getattr(self, name))

    @classmethod
    def load(cls, path):
        with h5py.File(path, "r") as f:
            names = ("components", "sample", "landmarks", "nearest", "random_state")
            layout = cls(**{k: int(f.attrs[k]) for k in names}, sharpness=float(f.attrs["sharpness"]))
            for name in ("components", "landmark_vectors", "landmark_xy"):
                setattr(layout, name + "_", f[name][:])
        return layout


def _unit(vectors):
    """Rows scaled to unit length, as float32 (an all-zero row stays zero)."""
    return normalize(sp.csr_matrix(vectors, dtype=np.float32))


def _tsne(points, random_state):
    """t-SNE of the landmarks (cosine neighbourhoods: their rows have unit length); a line for fewer than five."""
    m = len(points)
    if m < 5:
        return np.stack([np.arange(m, dtype=np.float64), np.zeros(m)], axis=1)
    return TSNE(n_components=2, perplexity=min(30.0, (m - 1) / 3), init="pca", random_state=random_state).fit_transform(
        points
    )


def _unit_square(xy):
    """Places moved and scaled into [0.05, 0.95], the aspect kept."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float(max((high - low).max(), 1e-12))
    centred = (xy - (low + high) / 2) / span
    return (0.5 + 0.9 * centred).astype(np.float32)


def save_map(path, ids, xy, attrs):
    """Write map.h5: each image's database ID and place."""
    with create(path) as f:
        f.attrs.update(attrs)
        write_ids(f, "ids", ids)
        f.create_dataset("xy", data=np.asarray(xy, dtype=np.float32))


def load_map(path):
    """(ids, xy) of map.h5."""
    with h5py.File(path, "r") as f:
        return read_ids(f["ids"]), f["xy"][:]
