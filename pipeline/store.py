"""The feature store: descriptors of every extracted image, committed batch by batch."""

import concurrent.futures
import hashlib
import io
import logging
import os
from dataclasses import dataclass

import h5py
import numpy as np

from .collection import log_rejected
from .errors import ArtifactError
from .h5io import atomic_path, read_ids, read_strings, write_ids, write_strings

logger = logging.getLogger(__name__)


#: Version of the chunk layout; part of the store's settings, so a new layout starts a new store.
FORMAT = 2


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
    x = np.asarray(descriptors, dtype=np.float32)
    offset = x.min(axis=-1)
    scale = (x.max(axis=-1) - offset) / 255
    scale[scale == 0] = 1.0
    codes = np.rint((x - offset[..., None]) / scale[..., None]).astype(np.uint8)
    return codes, offset, scale


def dequantize(codes, offset, scale):
    """Inverse of :func:`quantize`: ndarray of shape (n, n_local, c), float32."""
    return codes * scale[..., None] + offset[..., None]


class FeatureStore:
    """A folder of chunk files, one per extracted batch, each written whole or not at all.

    A chunk holds the keys (relative path plus size and modification time) of its images,
    their descriptors as 8-bit codes (see :func:`quantize`; gzip-compressed, about 100 KB per
    image of 49 x 2048 values, half of float16), and the images of the batch that could not
    be decoded with the reason.
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
            chunks = (1, *codes.shape[1:]) if len(codes) else None
            f.create_dataset("codes", data=codes, chunks=chunks, compression="gzip", compression_opts=1)
            f.create_dataset("offset", data=offset)
            f.create_dataset("scale", data=scale)
            write_strings(f, "rejected_keys", list(rejected))
            write_strings(f, "rejected_reasons", list(rejected.values()))
        with atomic_path(os.path.join(self.chunk_dir, name)) as tmp:
            with open(tmp, "wb") as out:
                out.write(memory.getbuffer())
        return name


def shard_of(relpath, shards):
    """The shard (0 .. shards - 1) of an image: a stable hash of its path below content/, so
    that it never depends on the listing, the machine or the Python version, and adding
    images never moves the others."""
    return int.from_bytes(hashlib.sha1(relpath.encode("utf-8")).digest()[:8], "big") % shards


def extract_to_store(store, make_extractor, files, content_dir, progress=None):
    """Extract the descriptors of the files the store does not hold yet.

    Batches are formed over the files still to do in their given order, so a resumed run
    forms the same batches as the run it resumes. Several processes may extract disjoint
    files into one store at once (each chunk is its own file, renamed into place whole).

    Parameters
    ----------
    store : FeatureStore
    make_extractor : callable returning a DescriptorExtractor
        Called only when there is something to extract (building the model takes seconds).
    files : list of ImageFile
    content_dir : str
    progress : callable(done, total), optional
        Called after each committed batch.

    Returns
    -------
    n_extracted, n_reused : int
    """
    done, rejected = store.scan()
    todo = [f for f in files if f.key not in done and f.key not in rejected]
    logger.info("extracting %d images, reusing %d already in the feature store", len(todo), len(files) - len(todo))
    if not todo:
        return 0, len(files)
    paths = [os.path.join(content_dir, f.relpath) for f in todo]
    # each batch is committed in a thread while the model runs on the next one (8-bit codes
    # and compression cost about a tenth of a CPU forward pass); one commit at a time is in
    # flight, and a failed commit stops the extraction
    committed, pending = 0, None

    def commit(keys, descriptors, rejected):
        store.write_chunk(keys, descriptors, rejected)
        return len(keys) + len(rejected)

    def wait_for_commit():
        nonlocal committed
        committed += pending.result()
        if progress is not None:
            progress(committed, len(todo))

    with make_extractor() as extractor, concurrent.futures.ThreadPoolExecutor(1) as writer:
        for start, descriptors, errors in extractor.run(paths):
            batch = todo[start : start + len(descriptors)]
            good = [i for i in range(len(batch)) if i not in errors]
            rejected = {batch[i].key: reason for i, reason in errors.items()}
            if pending is not None:
                wait_for_commit()
            pending = writer.submit(commit, [batch[i].key for i in good], descriptors[good], rejected)
        if pending is not None:
            wait_for_commit()
    return len(todo), len(files) - len(todo)


#: Images per block when later stages stream descriptors. Fixed, so that sums over blocks are
#: the same float for float whatever chunks the store holds (an interrupted or incremental
#: extraction commits other chunks than a single run).
BLOCK_SIZE = 128


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


def fixed_blocks(n, block_size=BLOCK_SIZE):
    """Consecutive ranges of positions: [0, b), [b, 2b), ..."""
    return [np.arange(s, min(s + block_size, n)) for s in range(0, n, block_size)]


class Blocks:
    """Descriptors of n images as a sequence of fixed blocks of images, read on demand.

    ``blocks[i]`` is an ndarray of shape (n_i, n_local, c) for the images at
    ``blocks.positions(i)``; a stage that resumes at block i reads nothing before it.
    Subclasses say how to ``read(positions)`` and ``n_local()``.
    """

    def __init__(self, n_images, block_size=BLOCK_SIZE):
        self.n_images = n_images
        self._blocks = fixed_blocks(n_images, block_size)

    def __len__(self):
        return len(self._blocks)

    def positions(self, i):
        return self._blocks[i]

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.read(self._blocks[i])

    def subset(self, positions):
        """The images at ``positions`` (increasing), as blocks of their own."""
        return SubsetBlocks(self, positions)


class SubsetBlocks(Blocks):
    """Some images of other blocks, read from them on demand."""

    def __init__(self, parent, positions, block_size=BLOCK_SIZE):
        super().__init__(len(positions), block_size)
        self.parent = parent
        self.chosen = np.asarray(positions, dtype=np.int64)

    def read(self, positions):
        return self.parent.read(self.chosen[positions])

    def n_local(self):
        return self.parent.n_local()


def sample_images(n_images, n_wanted, random_state):
    """A seeded uniform sample of image positions, increasing.

    Returns
    -------
    positions : ndarray of shape (min(n_images, n_wanted),), int64
        Every position when ``n_wanted`` is 0 or at least ``n_images``.
    """
    if n_wanted <= 0 or n_wanted >= n_images:
        return np.arange(n_images, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_images, size=n_wanted, replace=False)).astype(np.int64)


class DescriptorBlocks(Blocks):
    """The descriptors of a FeatureIndex, read from the feature store."""

    def __init__(self, store, index, block_size=BLOCK_SIZE):
        super().__init__(len(index), block_size)
        self.store = store
        self.index = index

    def read(self, positions):
        """Descriptors of any images, by position."""
        return read_block(self.store, self.index, np.asarray(positions))

    def n_local(self):
        """Number of local descriptors per image (h * w of the layer)."""
        if not len(self.index):
            raise ArtifactError("the feature index holds no images")
        with h5py.File(os.path.join(self.store.chunk_dir, self.index.chunk[0]), "r") as f:
            return int(f["codes"].shape[1])


class ArrayBlocks(Blocks):
    """Descriptors held in memory: synthetic collections and tests.

    Parameters
    ----------
    descriptors : ndarray of shape (n_images, n_local, c)
    """

    def __init__(self, descriptors, block_size=BLOCK_SIZE):
        super().__init__(len(descriptors), block_size)
        self.descriptors = descriptors

    def read(self, positions):
        return self.descriptors[positions]

    def n_local(self):
        return self.descriptors.shape[1]


def extract_features(store, files, content_dir, weights, layer, seed, batch_size, progress=None, **decoding):
    """Bring the store up to date with ``files`` (all of an inventory's, or one shard's).

    ``decoding`` holds the DescriptorExtractor's decoding settings (``decode_processes``,
    ``decode_timeout``, ``max_pixels``).

    Returns
    -------
    n_extracted, n_reused : int
    """
    from .features import DescriptorExtractor, cached_model

    def make_extractor():
        return DescriptorExtractor(cached_model(weights, layer, seed), batch_size=batch_size, **decoding)

    return extract_to_store(store, make_extractor, files, content_dir, progress)
