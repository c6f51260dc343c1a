"""Bag-of-visual-words histograms: each image as the count of its descriptors per visual word.

With ``[histograms] assign = m``, each descriptor counts once for each of its m nearest words
(multiple assignment), so every row sums to n_local * m.
"""

import logging

import h5py
import numpy as np
import scipy.sparse as sp

from .errors import ArtifactError
from .h5io import create, read_strings, write_strings
from .settings import Histograms
from .threads import MIN_ROWS, by_rows

logger = logging.getLogger(__name__)


#: ``[histograms] assign``: the words each descriptor counts for, 1 (its nearest) to MAX_ASSIGN.
#: The shipped setting (docs/quality.md says why).
DEFAULT_ASSIGN = Histograms.assign


def word_histograms(words, size):
    """Histograms of visual-word assignments.

    Parameters
    ----------
    words : ndarray of shape (n_images, n), int
        The visual words each image's descriptors were assigned to (n = n_local * assign).
    size : int
        Codebook size K.

    Returns
    -------
    counts : csr_matrix of shape (n_images, size), int32
        At most n non-zeros per row, each row summing to n.
    """
    n_images, n_local = words.shape
    rows = np.repeat(np.arange(n_images), n_local)
    counts = sp.csr_matrix((np.ones(words.size, dtype=np.int32), (rows, words.ravel())), shape=(n_images, size))
    counts.sum_duplicates()
    return counts


def assign_words(descriptors, reducer, codebook, assign=DEFAULT_ASSIGN):
    """The visual words of each image's local descriptors: every descriptor reduced, then
    assigned to its ``assign`` nearest words.

    Parameters
    ----------
    descriptors : ndarray of shape (n_images, n_local, c)

    Returns
    -------
    words : ndarray of shape (n_images, n_local * assign), int64
    """
    n_local = descriptors.shape[1]

    def words(images):
        reduced = reducer.transform(images).reshape(-1, reducer.n_components_)
        return codebook.nearest(reduced, assign).reshape(len(images), n_local * assign)

    return by_rows(words, descriptors, images_per_thread(n_local))


def images_per_thread(n_local):
    """Fewest images worth a thread of their own (:func:`pipeline.threads.by_rows`), for images
    of ``n_local`` descriptors: the reducer takes each image whole."""
    return max(1, MIN_ROWS // max(n_local, 1))


def compute_histograms(
    blocks,
    keys,
    reducer,
    codebook,
    assign=DEFAULT_ASSIGN,
    previous=None,
    checkpoints=None,
    block_size=128,
    progress=None,
):
    """Assign every descriptor to its visual word and count per image.

    Parameters
    ----------
    blocks : DescriptorBlocks or ArrayBlocks
        Descriptors of the images, read with ``blocks.read(positions)``.
    keys : ndarray of shape (n_images,), str
        Identity of each image's descriptors (path and fingerprint).
    reducer : Reducer
    codebook : Codebook
    assign : int
        Words each descriptor counts for (:func:`assign_words`).
    previous : (keys, counts, words), optional
        Histograms made with the same reducer, codebook and assignment (their keys, counts and
        words as :func:`load_counts` and :func:`load_words` read them): rows of unchanged images
        are taken from there instead of being computed again.
    checkpoints : Checkpoints, optional
        Where each computed block is committed, so a killed run resumes after it.
    progress : callable(done, total), optional
        Called after each block with the images computed so far.

    Returns
    -------
    counts : csr_matrix of shape (n_images, K), int32
    n_reused : int
        Rows taken from ``previous``.
    words : ndarray of shape (n_images, n_local * assign)
        Each image's words per cell of its grid, row by row (:func:`assign_words`), in the
        smallest integer type that holds K (what geometric verification matches, ``pipeline.verify``).
    """
    n_images = len(keys)
    where = {key: i for i, key in enumerate(previous[0])} if previous is not None else {}
    reused = np.array([p for p, key in enumerate(keys) if key in where], dtype=np.int64)
    todo = np.array([p for p, key in enumerate(keys) if key not in where], dtype=np.int64)
    parts, word_parts = [], []
    if len(reused):
        at = np.array([where[keys[p]] for p in reused])
        parts.append(previous[1][at])
        word_parts.append(previous[2][at])
    for b, start in enumerate(range(0, len(todo), block_size)):
        saved = checkpoints.load(b) if checkpoints else None
        if saved is None:
            found = assign_words(blocks.read(todo[start : start + block_size]), reducer, codebook, assign)
            saved = {"words": found.astype(word_type(codebook.size))}
            if checkpoints:
                checkpoints.save(b, saved)
        parts.append(word_histograms(saved["words"], codebook.size))  # sparse at once: memory per image stays small
        word_parts.append(saved["words"])
        if progress is not None:
            progress(min(start + block_size, len(todo)), len(todo))
    stacked = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, codebook.size), dtype=np.int32)
    order = np.argsort(np.concatenate([reused, todo]), kind="stable")
    counts = stacked[order].astype(np.int32)
    empty = np.zeros((0, blocks.n_local() * assign), dtype=word_type(codebook.size))
    words = (np.concatenate(word_parts) if word_parts else empty)[order]
    logger.info(
        "histograms of %d images over %d words: %d computed, %d reused", n_images, codebook.size, len(todo), len(reused)
    )
    return counts, len(reused), words


def word_type(size):
    """The smallest unsigned integer type that holds the words of a codebook of ``size`` words."""
    return np.uint16 if size <= 1 << 16 else np.uint32


def save_histograms(path, keys, counts, n_local, attrs, assign=DEFAULT_ASSIGN, words=None):
    """Write histograms.h5: each image's key, its counts (CSR) and, when given, its words per cell."""
    with create(path) as f:
        f.attrs.update(attrs)
        write_strings(f, "keys", keys)
        f.attrs["n_local"] = n_local
        f.attrs["assign"] = assign
        f.attrs["size"] = counts.shape[1]
        f.create_dataset("data", data=counts.data.astype(np.int32))
        f.create_dataset("indices", data=counts.indices.astype(np.int32))
        f.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        if words is not None:
            f.create_dataset("words", data=np.asarray(words).astype(word_type(counts.shape[1])))


def load_keys(path):
    """The keys of the images of histograms file ``path``, in its order."""
    with h5py.File(path, "r") as f:
        return read_strings(f["keys"])


def gather(keys, parts):
    """The histograms of the images ``keys`` (in that order) from ``parts``, (keys, counts, words)
    that hold each of them once (the histograms of shards): (keys, csr_matrix int32, words).

    Raises
    ------
    ArtifactError
        When an image is in no part or in several (shards of different runs).
    """
    part_keys = np.concatenate([k for k, _, _ in parts]) if parts else np.array([], dtype=str)
    where = {key: i for i, key in enumerate(part_keys)}
    if len(where) != len(part_keys) or len(part_keys) != len(keys) or any(key not in where for key in keys):
        raise ArtifactError(
            f"the histogram shards hold {len(part_keys)} images ({len(where)} distinct), the run {len(keys)}: "
            "they are not all of this run; run the pipeline again"
        )
    counts = sp.vstack([c for _, c, _ in parts], format="csr")
    at = np.array([where[key] for key in keys], dtype=np.int64)
    return np.asarray(keys), counts[at].astype(np.int32), np.concatenate([w for _, _, w in parts])[at]


def load_assign(path):
    """The ``assign`` the histograms of ``path`` were made with."""
    with h5py.File(path, "r") as f:
        return int(f.attrs.get("assign", 1))


def load_words(path, rows=None):
    """The words per cell of the images of histograms file ``path`` (:func:`compute_histograms`), of
    those at positions ``rows`` (increasing) only when given.

    Raises
    ------
    ArtifactError
        When the file holds none (made by an earlier version).
    """
    with h5py.File(path, "r") as f:
        if "words" not in f:
            raise ArtifactError(f"{path} holds no words per cell (an earlier version made it); run with --refit")
        return f["words"][:] if rows is None else f["words"][np.asarray(rows, dtype=np.int64)]


def has_words(path):
    """Whether histograms file ``path`` holds each image's words per cell."""
    with h5py.File(path, "r") as f:
        return "words" in f


def load_counts(path):
    """Return (keys, counts csr_matrix of shape (n_images, K) int32, n_local)."""
    with h5py.File(path, "r") as f:
        n_local, size = int(f.attrs["n_local"]), int(f.attrs["size"])
        indptr = f["indptr"][:]
        counts = sp.csr_matrix((f["data"][:], f["indices"][:], indptr), shape=(len(indptr) - 1, size))
        return read_strings(f["keys"]), counts, n_local


def load_rows(path, rows):
    """The counts of the images at positions ``rows`` (increasing) of histograms file ``path``:
    csr_matrix of shape (len(rows), K), int32, read row by row when they are few."""
    rows = np.asarray(rows, dtype=np.int64)
    with h5py.File(path, "r") as f:
        size, indptr = int(f.attrs["size"]), f["indptr"][:]
        n = len(indptr) - 1
        if len(rows) * 8 > n:  # many rows: one read of the whole is faster than one per row
            return sp.csr_matrix((f["data"][:], f["indices"][:], indptr), shape=(n, size))[rows]
        data, indices = f["data"], f["indices"]
        parts = [(data[indptr[r] : indptr[r + 1]], indices[indptr[r] : indptr[r + 1]]) for r in rows.tolist()]
    lengths = [len(d) for d, _ in parts]
    return sp.csr_matrix(
        (
            np.concatenate([d for d, _ in parts]) if parts else np.zeros(0, np.int32),
            np.concatenate([i for _, i in parts]) if parts else np.zeros(0, np.int32),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        ),
        shape=(len(rows), size),
    )


def load_counts_of(path, rows=None):
    """(counts csr_matrix of shape (n_images, K) int32, descriptors per image): the counts of
    histograms file ``path``, of the images at positions ``rows`` only when given."""
    if rows is None:
        _, counts, n_local = load_counts(path)
        return counts, n_local
    counts = load_rows(path, rows)
    with h5py.File(path, "r") as f:
        return counts, int(f.attrs["n_local"])
