"""StandardScaler + PCA fitted exactly on every descriptor by streaming second moments, with an
optional normalisation of each local descriptor before the scaler and after the projection."""

import copy
import logging

import h5py
import numpy as np

from .blocks import sample_images
from .errors import ConfigError
from .h5io import create
from .settings import DESCRIPTOR_NORMS, Reduction
from .threads import one_blas_thread

logger = logging.getLogger(__name__)

#: ``[reduction] descriptors``: each local descriptor as the model gives it (raw), divided by its
#: L2 norm (l2), or the square root of its absolute values divided by their sum, with its signs
#: (root, as RootSIFT: the Hellinger kernel of the descriptors).
#: ``[reduction] reduced``: each projected descriptor as it is (raw) or divided by its L2 norm (l2).
#: The shipped settings (docs/quality.md says why).
DEFAULT_DESCRIPTORS, DEFAULT_REDUCED = Reduction.descriptors, Reduction.reduced
#: Default of ``[reduction] variance`` (the original's PCA(0.97)) and ``sample_images``.
DEFAULT_VARIANCE, DEFAULT_SAMPLE_IMAGES = Reduction.variance, Reduction.sample_images


def normalise_rows(x, norm):
    """Rows of ``x`` (float64) normalised by ``norm`` (see DESCRIPTOR_NORMS); rows of zeros stay zero."""
    if norm == "raw":
        return x
    if norm == "l2":
        length = np.sqrt(np.einsum("ij,ij->i", x, x))
        return x / np.where(length > 0, length, 1.0)[:, None]
    if norm == "root":
        total = np.abs(x).sum(axis=1)
        return np.sign(x) * np.sqrt(np.abs(x) / np.where(total > 0, total, 1.0)[:, None])
    raise ConfigError(f"normalisation {norm!r} must be one of {', '.join(DESCRIPTOR_NORMS)}")


class Reducer:
    """Standardise each channel, then project onto the principal components that keep
    ``variance`` of the total variance.

    Equivalent to scikit-learn's ``StandardScaler()`` followed by
    ``PCA(n_components=variance, svd_solver="full")``, with the same sign convention for the
    components, but fitted from the running sum and the sum of outer products (float64), so
    the descriptors stream through in chunks and memory stays at one c x c matrix.

    Parameters
    ----------
    variance : float in (0, 1]
        Fraction of the variance of the standardised descriptors that the kept components explain.
    descriptors : {"raw", "l2", "root"}
        Normalisation of each local descriptor before the scaler (DESCRIPTOR_NORMS); by
        default the shipped ``[reduction] descriptors``, DEFAULT_DESCRIPTORS.
    reduced : {"raw", "l2"}
        Normalisation of each projected descriptor (REDUCED_NORMS); by default the shipped
        DEFAULT_REDUCED.
    """

    def __init__(self, variance=DEFAULT_VARIANCE, descriptors=DEFAULT_DESCRIPTORS, reduced=DEFAULT_REDUCED):
        self.variance = variance
        self.descriptors = descriptors
        self.reduced = reduced

    def fit(self, blocks, checkpoints=None):
        """Fit on an array of shape (n, c), or on a sequence of such arrays (blocks).

        Parameters
        ----------
        blocks : ndarray of shape (n, c), or sequence of ndarrays of shape (n_i, ..., c)
            Blocks are read one at a time, in order; extra leading axes are flattened.
        checkpoints : Checkpoints, optional
            Where the running sums are saved now and then; a fit that finds a saved state
            resumes after its block, with the same result as an uninterrupted fit.

        Returns
        -------
        self
        """
        for name in ("variance", "descriptors", "reduced"):
            Reduction.check(name, getattr(self, name))
        if isinstance(blocks, np.ndarray):
            blocks = [blocks]
        done, state = checkpoints.latest_state() if checkpoints else (None, None)
        if state is None:
            done, n, shift, total, outer = -1, 0, None, None, None
        else:
            n, shift, total, outer = int(state["n"]), state["shift"], state["total"], state["outer"]
        for i in range(done + 1, len(blocks)):
            x = np.asarray(blocks[i], dtype=np.float64)
            x = normalise_rows(x.reshape(-1, x.shape[-1]), self.descriptors)
            if shift is None:
                # moments about a first estimate of the mean keep the float64 sums well conditioned
                shift = x.mean(axis=0)
                total = np.zeros_like(shift)
                outer = np.zeros((len(shift), len(shift)))
            x = x - shift
            n += len(x)
            total += x.sum(axis=0)
            outer += x.T @ x
            if checkpoints:
                checkpoints.save_state(i, {"n": n, "shift": shift, "total": total, "outer": outer})
        if n < 2:
            raise ConfigError(f"the reducer needs at least 2 descriptors, got {n}; add images to the collection")
        centred = total / n
        covariance = outer / n - np.outer(centred, centred)
        self.n_samples_seen_ = n
        self.mean_ = shift + centred
        var = np.clip(np.diag(covariance), 0, None)
        self.var_ = var
        # as StandardScaler: constant channels keep scale 1
        self.scale_ = np.where(var > 10 * np.finfo(np.float64).eps * np.maximum(1.0, self.mean_**2), np.sqrt(var), 1.0)
        correlation = covariance / np.outer(self.scale_, self.scale_)
        eigenvalues, eigenvectors = np.linalg.eigh(correlation)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0, None)
        components = eigenvectors[:, order].T
        # as scikit-learn's svd_flip(u_based_decision=False): largest loading of each component positive
        signs = np.sign(components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)])
        components *= signs[:, None]
        ratio = eigenvalues / eigenvalues.sum()
        k = min(int(np.searchsorted(np.cumsum(ratio), self.variance, side="right")) + 1, len(ratio))
        self.n_components_ = k
        self.components_ = components[:k]
        self.explained_variance_ = eigenvalues[:k] * n / (n - 1)
        self.explained_variance_ratio_ = ratio[:k]
        logger.info(
            "reducer fitted on %d descriptors: %d channels -> %d components (%.1f%% of the variance)",
            n,
            len(self.mean_),
            k,
            100 * ratio[:k].sum(),
        )
        return self

    def transform(self, x):
        """Project descriptors, image by image.

        Parameters
        ----------
        x : ndarray of shape (n_local, c), one image's descriptors, or (n_images, n_local, c)

        Returns
        -------
        reduced : ndarray of shape (n_local, n_components_) or (n_images, n_local, n_components_), float32

        Each image is one float32 matrix product on one BLAS thread. A BLAS product's last bits
        depend on a row's place among the rows multiplied with it and on the threads, so an
        image's descriptors are reduced the same, bit for bit, whatever images it is reduced
        with (a night reduces only its new images): half the time of a float64 product of the
        whole block, which was near enough but not exactly so. What follows the product is
        float64.
        """
        x = np.asarray(x)
        images = x.reshape(-1 if x.size else 0, *x.shape[-2:])
        weights, offset = self._projection()
        out = np.empty((len(images), images.shape[1], len(offset)), dtype=np.float32)
        with one_blas_thread():
            for i, image in enumerate(images):
                if self.descriptors == "l2":  # the length divides the product, not the channels
                    image = np.asarray(image, dtype=np.float32)
                    length = np.sqrt(np.einsum("ij,ij->i", image, image).astype(np.float64))
                    product = (image @ weights) / np.where(length > 0, length, 1.0)[:, None]
                else:
                    wide = np.asarray(image, dtype=np.float64)
                    product = normalise_rows(wide, self.descriptors).astype(np.float32) @ weights
                out[i] = normalise_rows(product - offset, self.reduced)
        return out.reshape(*x.shape[:-1], len(offset))

    def _projection(self):
        """((x - mean) / scale) @ components.T as x @ weights - offset: the weights in float32,
        the offset in float64, made once per fit."""
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] is not self.components_:
            weights = np.ascontiguousarray((self.components_ / self.scale_).T, dtype=np.float32)
            kept = self.__dict__["_kept"] = (self.components_, weights, (self.mean_ / self.scale_) @ self.components_.T)
        return kept[1], kept[2]

    def with_reduced(self, reduced):
        """This fit with another normalisation after the projection (``reduced`` does not change the fit)."""
        other = copy.copy(self)
        other.reduced = reduced
        return other

    def save(self, path, attrs):
        with create(path) as f:
            f.attrs.update(attrs)
            f.attrs["variance"] = self.variance
            f.attrs["descriptors"] = self.descriptors
            f.attrs["reduced"] = self.reduced
            f.attrs["n_samples_seen"] = self.n_samples_seen_
            for name in ("mean_", "var_", "scale_", "components_", "explained_variance_", "explained_variance_ratio_"):
                f.create_dataset(name.rstrip("_"), data=getattr(self, name))

    @classmethod
    def load(cls, path):
        with h5py.File(path, "r") as f:
            reducer = cls(
                variance=float(f.attrs["variance"]),
                descriptors=str(f.attrs.get("descriptors", "raw")),
                reduced=str(f.attrs.get("reduced", "raw")),
            )
            reducer.n_samples_seen_ = int(f.attrs["n_samples_seen"])
            for name in ("mean_", "var_", "scale_", "components_", "explained_variance_", "explained_variance_ratio_"):
                setattr(reducer, name, f[name.rstrip("_")][:])
            reducer.n_components_ = len(reducer.components_)
        return reducer


def fit_reducer(
    blocks,
    variance=DEFAULT_VARIANCE,
    descriptors=DEFAULT_DESCRIPTORS,
    reduced=DEFAULT_REDUCED,
    sample_images_=DEFAULT_SAMPLE_IMAGES,
    seed=0,
    checkpoints=None,
):
    """The reducer of a run: fitted on every descriptor of a seeded sample of ``sample_images_``
    images of ``blocks`` (all of them when there are no more; ``[reduction]``'s settings)."""
    sample = blocks.subset(sample_images(blocks.n_images, sample_images_, seed))
    return Reducer(variance, descriptors, reduced).fit(sample, checkpoints=checkpoints)
