"""Bag-of-visual-words histograms: each image as the share of its descriptors per visual word."""

import logging

import h5py
import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)


def word_histograms(words, size):
    """Histograms of visual-word assignments.

    Parameters
    ----------
    words : ndarray of shape (n_images, n_local), int
        Nearest visual word of each descriptor.
    size : int
        Codebook size K.

    Returns
    -------
    counts : csr_matrix of shape (n_images, size), int32
        At most n_local non-zeros per row; divide by n_local for the normalised histogram.
    """
    n_images, n_local = words.shape
    rows = np.repeat(np.arange(n_images), n_local)
    counts = sp.csr_matrix((np.ones(words.size, dtype=np.int32), (rows, words.ravel())), shape=(n_images, size))
    counts.sum_duplicates()
    return counts


def compute_histograms(chunks, n_images, reducer, codebook):
    """Assign every descriptor to its visual word and count per image.

    Parameters
    ----------
    chunks : iterable of (positions, descriptors)
        ``descriptors`` of shape (n, n_local, c) for the images at ``positions``.
    n_images : int
    reducer : Reducer
    codebook : Codebook

    Returns
    -------
    counts : csr_matrix of shape (n_images, K), int32
    n_local : int
    """
    parts, order, n_local = [], [], None
    for positions, descriptors in chunks:
        n, n_local, c = descriptors.shape
        words = codebook.predict(reducer.transform(descriptors.reshape(-1, c))).reshape(n, n_local)
        parts.append(word_histograms(words, codebook.size))
        order.append(positions)
    counts = sp.vstack(parts, format="csr")
    counts = counts[np.argsort(np.concatenate(order))]
    if counts.shape[0] != n_images:
        raise ValueError(f"expected histograms of {n_images} images, got {counts.shape[0]}")
    logger.info("histograms of %d images over %d words", n_images, codebook.size)
    return counts, n_local


def save_histograms(path, counts, n_local, attrs):
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        f.attrs["n_local"] = n_local
        f.attrs["size"] = counts.shape[1]
        f.create_dataset("data", data=counts.data.astype(np.int32))
        f.create_dataset("indices", data=counts.indices.astype(np.int32))
        f.create_dataset("indptr", data=counts.indptr.astype(np.int64))


def load_histograms(path):
    """Return the normalised histograms as a csr_matrix of shape (n_images, K), float64."""
    with h5py.File(path, "r") as f:
        n_local, size = int(f.attrs["n_local"]), int(f.attrs["size"])
        indptr = f["indptr"][:]
        return sp.csr_matrix(
            (f["data"][:].astype(np.float64) / n_local, f["indices"][:], indptr), shape=(len(indptr) - 1, size)
        )
