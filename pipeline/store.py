"""The feature store: descriptors of every extracted image, committed batch by batch."""

import hashlib
import io
import logging
import os
from dataclasses import dataclass

import h5py
import numba
import numpy as np

from .collection import log_rejected
from .errors import ArtifactError
from .h5io import atomic_path, read_ids, read_strings, write_ids, write_strings

logger = logging.getLogger(__name__)


#: Version of the chunk layout and of the decoding that makes the model's input (3: the fast
#: decoders' reduced copies); part of the store's settings, so a new version starts a new store.
FORMAT = 3


def quantize(descriptors):
    """Descriptors as 8-bit codes, each local descriptor scaled between its own min and max.

    Parameters
    ----------
    descriptors : ndarray of shape (n, n_local, c)

    Returns
    -------
    codes : ndarray of shape (n, n_local, c), uint8
    offset, scale : ndarray of shape (n, n_local), float32
        ``codes * scale + offset`` restores each value to within scale / 2.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    rows = x.reshape(-1, x.shape[-1])
    codes = np.empty(rows.shape, dtype=np.uint8)
    offset = np.empty(len(rows), dtype=np.float32)
    scale = np.empty(len(rows), dtype=np.float32)
    _quantize_rows(rows, codes, offset, scale)
    return codes.reshape(x.shape), offset.reshape(x.shape[:-1]), scale.reshape(x.shape[:-1])


@numba.njit(nogil=True, cache=True)
def _quantize_rows(rows, codes, offset, scale):
    """:func:`quantize` of each row, in one pass for its range and one for its codes (the
    commit thread runs it beside the model, without the GIL)."""
    for i in range(rows.shape[0]):
        low = rows[i, 0]
        high = rows[i, 0]
        for value in rows[i]:
            low = min(low, value)
            high = max(high, value)
        step = (high - low) / np.float32(255)
        if step == 0:
            step = np.float32(1)
        offset[i] = low
        scale[i] = step
        for j in range(rows.shape[1]):
            codes[i, j] = np.uint8(np.rint((rows[i, j] - low) / step))


def dequantize(codes, offset, scale):
    """Inverse of :func:`quantize`: ndarray of shape (n, n_local, c), float32."""
    return codes * scale[..., None] + offset[..., None]


class FeatureStore:
    """A folder of chunk files, one per extracted batch, each written whole or not at all.

    A chunk holds the keys (relative path plus size and modification time) of its images,
    their descriptors as 8-bit codes (see :func:`quantize`; 98 KiB per image of 49 x 2048
    values, a quarter of float32), and the images of the batch that could not be decoded with
    the reason. Chunks written gzip-compressed by earlier versions read the same.
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

    @property
    def catalog_path(self):
        return os.path.join(self.root, "catalog.h5")

    def scan(self):
        """Read the keys of every committed chunk: from the catalog, and from the chunks
        written since it (only those are opened).

        Returns
        -------
        done : dict of str to (str, int)
            Key -> (chunk name, row) of every image with descriptors.
        rejected : dict of str to str
            Key -> reason of every image that could not be decoded.
        """
        return self._scan()[:2]

    def _scan(self):
        """(done, rejected, names of the chunks they come from)."""
        done, rejected, read = self._read_catalog()
        if not os.path.isdir(self.chunk_dir):
            return done, rejected, read
        for name in sorted(os.listdir(self.chunk_dir)):
            if not name.endswith(".h5") or name.startswith(".") or name in read:
                continue  # a temporary file of an interrupted write, or a chunk the catalog lists
            with h5py.File(os.path.join(self.chunk_dir, name), "r") as f:
                done.update((key, (name, row)) for row, key in enumerate(read_strings(f["keys"])))
                rejected.update(zip(read_strings(f["rejected_keys"]), read_strings(f["rejected_reasons"])))
            read.add(name)
        return done, rejected, read

    def _read_catalog(self):
        try:
            with h5py.File(self.catalog_path, "r") as f:
                chunk_names = read_strings(f["chunk_names"])
                done = dict(zip(read_strings(f["keys"]), zip(chunk_names[f["chunk"][:]], f["row"][:].tolist())))
                rejected = dict(zip(read_strings(f["rejected_keys"]), read_strings(f["rejected_reasons"])))
                return done, rejected, set(chunk_names)
        except (OSError, KeyError):  # none yet, or unreadable: every chunk is read
            return {}, {}, set()

    def update_catalog(self):
        """Scan the store and record what every chunk holds in one file, so that the next scan
        opens only the chunks written after it (at a million images, some 60,000 files).
        Only one process may call it at a time: the one that indexes a run, after its shards.

        Returns
        -------
        done, rejected : as :meth:`scan`
        """
        done, rejected, read = self._scan()
        names = sorted(read)
        number = {name: i for i, name in enumerate(names)}
        with atomic_path(self.catalog_path) as tmp:
            with h5py.File(tmp, "w") as f:
                write_strings(f, "chunk_names", names)
                write_strings(f, "keys", list(done))
                f.create_dataset("chunk", data=np.array([number[c] for c, _ in done.values()], dtype=np.int64))
                f.create_dataset("row", data=np.array([r for _, r in done.values()], dtype=np.int64))
                write_strings(f, "rejected_keys", list(rejected))
                write_strings(f, "rejected_reasons", list(rejected.values()))
        return done, rejected

    def remove_stale_temporaries(self):
        """Remove what killed chunk writes left behind (call it when no shard of a run is extracting)."""
        if os.path.isdir(self.chunk_dir):
            for name in os.listdir(self.chunk_dir):
                if name.startswith(".") and name.endswith(".tmp"):
                    os.remove(os.path.join(self.chunk_dir, name))

    def write_chunk(self, keys, descriptors, rejected):
        """Commit one batch atomically.

        Parameters
        ----------
        keys : list of str
            Keys of the images with descriptors.
        descriptors : ndarray of shape (len(keys), n_local, n_channels)
        rejected : dict of str to str
            Key -> reason of the batch's images that could not be decoded.
        """
        name = hashlib.sha1("\n".join([*keys, *rejected]).encode()).hexdigest()[:20] + ".h5"
        # made in memory, then written out: HDF5 crashes the process when a compressed write
        # meets a full disk, while a plain write fails with an OSError like any other
        memory = io.BytesIO()
        with h5py.File(memory, "w") as f:
            write_strings(f, "keys", keys)
            codes, offset, scale = quantize(descriptors)
            # not compressed: gzip level 1 saved 8 % of the bytes for 3.3 ms per image (docs/performance.md)
            f.create_dataset("codes", data=codes)
            f.create_dataset("offset", data=offset)
            f.create_dataset("scale", data=scale)
            write_strings(f, "rejected_keys", list(rejected))
            write_strings(f, "rejected_reasons", list(rejected.values()))
        with atomic_path(os.path.join(self.chunk_dir, name)) as tmp:
            with open(tmp, "wb") as out:
                out.write(memory.getbuffer())
        return name


@dataclass
class FeatureIndex:
    """Where the descriptors of a run's images are: one row per image that has them."""

    ids: np.ndarray
    ppn: np.ndarray
    filename: np.ndarray
    keys: np.ndarray
    chunk: np.ndarray
    row: np.ndarray
    rejected: list
    """(relative path, reason) of the images that could not be decoded."""

    def __len__(self):
        return len(self.ids)


def index_inventory(store, inventory):
    """Locate every inventory image in the store, and bring the store's catalog up to date.

    Raises
    ------
    ArtifactError
        When an image is neither extracted nor rejected (the extraction did not finish).
    """
    done, rejected = store.update_catalog()
    keep, chunk, row, failed = [], [], [], []
    for i, f in enumerate(inventory.files):
        if f.key in done:
            keep.append(i)
            chunk.append(done[f.key][0])
            row.append(done[f.key][1])
        elif f.key in rejected:
            failed.append((f.relpath, rejected[f.key]))
        else:
            raise ArtifactError(
                f"{f.relpath} has no descriptors in the feature store {store.root}; run the extraction again"
            )
    log_rejected(failed)
    return FeatureIndex(
        ids=inventory.ids[keep],
        ppn=np.array([inventory.files[i].ppn for i in keep], dtype=str),
        filename=np.array([inventory.files[i].filename for i in keep], dtype=str),
        keys=np.array([inventory.files[i].key for i in keep], dtype=str),
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
        write_strings(f, "keys", index.keys)
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
            keys=read_strings(f["keys"]),
            chunk=read_strings(f["chunk"]),
            row=f["row"][:],
            rejected=list(zip(read_strings(f["rejected_path"]), read_strings(f["rejected_reason"]))),
        )


def read_block(store, index, positions):
    """Descriptors of the images at ``positions``: ndarray of shape (n, n_local, c), float32."""
    chunks = index.chunk[positions]
    out = None
    for name in dict.fromkeys(chunks):  # chunks in order of first use
        mine = np.flatnonzero(chunks == name)
        with h5py.File(os.path.join(store.chunk_dir, name), "r") as f:
            if out is None:
                out = np.empty((len(positions), *f["codes"].shape[1:]), dtype=np.float32)
            rows = index.row[positions[mine]]
            order = np.argsort(rows)
            rows = rows[order]  # h5py reads increasing rows
            out[mine[order]] = dequantize(f["codes"][rows], f["offset"][rows], f["scale"][rows])
    return out
