"""The feature store: descriptors of every extracted image, committed batch by batch."""

import hashlib
import logging
import os
from dataclasses import dataclass

import h5py
import numpy as np

from .collection import log_rejected
from .errors import ArtifactError
from .h5io import atomic_path, read_ids, read_strings, write_ids, write_strings

logger = logging.getLogger(__name__)


class FeatureStore:
    """A folder of chunk files, one per extracted batch, each written whole or not at all.

    A chunk holds the keys (relative path plus size and modification time) of its images,
    their descriptors, and the images of the batch that could not be decoded with the reason.
    An image is done once a chunk names it, so an interrupted extraction loses at most the
    batch in flight, and a changed file (new key) is extracted again.

    Parameters
    ----------
    root : str
        The store's folder; one store per model configuration.
    """

    def __init__(self, root):
        self.root = root
        self.chunk_dir = os.path.join(root, "chunks")

    def scan(self):
        """Read the keys of every committed chunk.

        Returns
        -------
        done : dict of str to (str, int)
            Key -> (chunk name, row) of every image with descriptors.
        rejected : dict of str to str
            Key -> reason of every image that could not be decoded.
        """
        done, rejected = {}, {}
        if not os.path.isdir(self.chunk_dir):
            return done, rejected
        for name in sorted(os.listdir(self.chunk_dir)):
            if not name.endswith(".h5") or name.startswith("."):
                continue  # a temporary file of an interrupted write
            with h5py.File(os.path.join(self.chunk_dir, name), "r") as f:
                done.update((key, (name, row)) for row, key in enumerate(read_strings(f["keys"])))
                rejected.update(zip(read_strings(f["rejected_keys"]), read_strings(f["rejected_reasons"])))
        return done, rejected

    def write_chunk(self, keys, descriptors, rejected):
        """Commit one batch atomically.

        Parameters
        ----------
        keys : list of str
            Keys of the images with descriptors.
        descriptors : ndarray of shape (len(keys), n_local, n_channels), float16
        rejected : dict of str to str
            Key -> reason of the batch's images that could not be decoded.
        """
        name = hashlib.sha1("\n".join([*keys, *rejected]).encode()).hexdigest()[:20] + ".h5"
        with atomic_path(os.path.join(self.chunk_dir, name)) as tmp:
            with h5py.File(tmp, "w") as f:
                write_strings(f, "keys", keys)
                f.create_dataset("descriptors", data=descriptors)
                write_strings(f, "rejected_keys", list(rejected))
                write_strings(f, "rejected_reasons", list(rejected.values()))
        return name


def extract_to_store(store, extractor, files, content_dir):
    """Extract the descriptors of the files the store does not hold yet.

    Batches are formed over the files still to do in their given order, so a resumed run
    forms the same batches as the run it resumes.

    Parameters
    ----------
    store : FeatureStore
    extractor : DescriptorExtractor
    files : list of ImageFile
    content_dir : str

    Returns
    -------
    n_extracted, n_reused : int
    """
    done, rejected = store.scan()
    todo = [f for f in files if f.key not in done and f.key not in rejected]
    logger.info("extracting %d images, reusing %d already in the feature store", len(todo), len(files) - len(todo))
    paths = [os.path.join(content_dir, f.relpath) for f in todo]
    for start, descriptors, errors in extractor.run(paths):
        batch = todo[start : start + len(descriptors)]
        good = [i for i in range(len(batch)) if i not in errors]
        store.write_chunk(
            [batch[i].key for i in good], descriptors[good], {batch[i].key: reason for i, reason in errors.items()}
        )
        logger.info("extracted %d / %d images", start + len(batch), len(todo))
    return len(todo), len(files) - len(todo)


@dataclass
class FeatureIndex:
    """Where the descriptors of a run's images are: one row per image that has them."""

    ids: np.ndarray
    ppn: np.ndarray
    filename: np.ndarray
    chunk: np.ndarray
    row: np.ndarray
    rejected: list
    """(relative path, reason) of the images that could not be decoded."""

    def __len__(self):
        return len(self.ids)

    def groups(self):
        """Yield (positions, chunk name, rows) for each chunk, in order of first position."""
        order = np.argsort(self.chunk, kind="stable")
        names, starts = np.unique(self.chunk[order], return_index=True)
        bounds = [*starts[1:], len(order)]
        groups = [(order[s:e], name) for name, s, e in zip(names, starts, bounds)]
        for positions, name in sorted(groups, key=lambda g: g[0][0]):
            yield positions, name, self.row[positions]


def index_inventory(store, inventory):
    """Locate every inventory image in the store.

    Raises
    ------
    ArtifactError
        When an image is neither extracted nor rejected (the extraction did not finish).
    """
    done, rejected = store.scan()
    keep, chunk, row, failed = [], [], [], []
    for i, f in enumerate(inventory.files):
        if f.key in done:
            keep.append(i)
            chunk.append(done[f.key][0])
            row.append(done[f.key][1])
        elif f.key in rejected:
            failed.append((f.relpath, rejected[f.key]))
        else:
            raise ArtifactError(f"{f.relpath} has no descriptors in the feature store {store.root}; run the extraction again")
    log_rejected(failed)
    return FeatureIndex(
        ids=inventory.ids[keep],
        ppn=np.array([inventory.files[i].ppn for i in keep], dtype=str),
        filename=np.array([inventory.files[i].filename for i in keep], dtype=str),
        chunk=np.array(chunk, dtype=str),
        row=np.array(row, dtype=np.int64),
        rejected=failed,
    )


def save_index(path, index, attrs):
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        write_ids(f, "ids", index.ids)
        write_strings(f, "ppn", index.ppn)
        write_strings(f, "filename", index.filename)
        write_strings(f, "chunk", index.chunk)
        f.create_dataset("row", data=index.row)
        write_strings(f, "rejected_path", [p for p, _ in index.rejected])
        write_strings(f, "rejected_reason", [r for _, r in index.rejected])


def load_index(path):
    with h5py.File(path, "r") as f:
        return FeatureIndex(
            ids=read_ids(f["ids"]),
            ppn=read_strings(f["ppn"]),
            filename=read_strings(f["filename"]),
            chunk=read_strings(f["chunk"]),
            row=f["row"][:],
            rejected=list(zip(read_strings(f["rejected_path"]), read_strings(f["rejected_reason"]))),
        )


def iter_descriptors(store, index):
    """Yield (positions, descriptors) chunk by chunk, descriptors of shape (n, n_local, n_channels) float16."""
    for positions, name, rows in index.groups():
        with h5py.File(os.path.join(store.chunk_dir, name), "r") as f:
            yield positions, f["descriptors"][:][rows]


def local_descriptor_count(store, index):
    """Number of local descriptors per image (h * w of the layer), read from the first chunk."""
    if not len(index):
        raise ArtifactError("the feature index holds no images")
    with h5py.File(os.path.join(store.chunk_dir, index.chunk[0]), "r") as f:
        return int(f["descriptors"].shape[1])


def iter_descriptor_rows(store, index):
    """Yield the pooled descriptors ("the bag") chunk by chunk, as arrays of shape (n, c)."""
    for _, descriptors in iter_descriptors(store, index):
        yield descriptors.reshape(-1, descriptors.shape[-1])


def extract_features(store, inventory, content_dir, weights, layer, seed, batch_size, decode_threads):
    """Bring the store up to date with the inventory and index the inventory's images in it.

    Returns
    -------
    FeatureIndex
    """
    from .features import DescriptorExtractor, build_model

    model = build_model(weights=weights, layer=layer, seed=seed)
    extractor = DescriptorExtractor(model, batch_size=batch_size, decode_threads=decode_threads)
    extract_to_store(store, extractor, inventory.files, content_dir)
    return index_inventory(store, inventory)
