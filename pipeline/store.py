"""The feature store: descriptors of every extracted image, committed batch by batch."""

import hashlib
import logging
import os
from dataclasses import dataclass

import h5py
import numba
import numpy as np

from .collection import log_rejected
from .errors import ArtifactError
from .h5io import atomic_path, create, read_ids, read_problem, read_strings, write_ids, write_strings

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


def dequantize(codes, offset, scale, out=None, at=None):
    """Inverse of :func:`quantize`: ndarray of shape (n, n_local, c), float32.

    With ``out`` (C-contiguous, shape (N, n_local, c), float32), image i is written to ``out[at[i]]``
    instead (``at``: every image in order by default), and ``out`` is returned."""
    c = codes.shape[-1]
    if out is None:
        out = np.empty(codes.shape, dtype=np.float32)
    at = np.arange(len(codes)) if at is None else np.asarray(at)
    n_local = int(np.prod(codes.shape[1:-1], dtype=np.int64))
    rows = (at[:, None] * n_local + np.arange(n_local)).ravel()
    _dequantize_rows(codes.reshape(-1, c), offset.reshape(-1), scale.reshape(-1), out.reshape(-1, c), rows)
    return out


@numba.njit(nogil=True, cache=True)
def _dequantize_rows(codes, offset, scale, out, rows):
    """out[rows[i]] = codes[i] * scale[i] + offset[i] in float32, rounded after the product and
    after the sum as numpy's two operations were: one pass, no temporary arrays."""
    for i in range(codes.shape[0]):
        target, step, low = out[rows[i]], scale[i], offset[i]
        for j in range(codes.shape[1]):
            target[j] = np.float32(codes[i, j]) * step + low


class FeatureStore:
    """A folder of chunk files, one per extracted batch, each written whole or not at all.

    A chunk holds the keys (relative path plus size and modification time) of its images,
    their descriptors as 8-bit codes (see :func:`quantize`; 98 KiB per image of 49 x 2048
    values, a quarter of float32), and the images of the batch that could not be decoded with
    the reason. An image is done once a chunk names it, so an interrupted extraction loses at most the
    batch in flight, and a changed file (new key) is extracted again.

    A chunk's arrays carry HDF5's fletcher32 checksum. A chunk that is missing, cannot be read, or whose size or time differs from what the
    catalog recorded and whose checksums fail, is damaged: :meth:`set_aside` moves it into
    ``damaged/``, its images are no longer done, and the next extraction makes them again.

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

    @property
    def damaged_dir(self):
        """Where damaged chunks are set aside until their images are extracted again."""
        return os.path.join(self.root, "damaged")

    def set_aside(self, name, reason):
        """Move the damaged chunk ``name`` into :attr:`damaged_dir`, with a warning; its images are
        extracted again by the next extraction."""
        logger.warning("feature chunk %s is damaged (%s): set aside, its images will be extracted again", name, reason)
        os.makedirs(self.damaged_dir, exist_ok=True)
        aside = os.path.join(self.damaged_dir, name)
        try:
            os.replace(os.path.join(self.chunk_dir, name), aside)
        except FileNotFoundError:  # gone already, or set aside by another shard: a mark that it was
            open(aside, "a").close()
        os.utime(aside)  # when it was set aside (:meth:`set_aside_after`)

    def set_aside_chunks(self):
        """The names of the chunks set aside and not yet cleared (:meth:`clear_set_aside`)."""
        try:
            return sorted(os.listdir(self.damaged_dir))
        except FileNotFoundError:
            return []

    def set_aside_after(self, mtime_ns):
        """Whether a chunk was set aside after ``mtime_ns`` (a file's modification time)."""
        for name in self.set_aside_chunks():
            try:
                if os.stat(os.path.join(self.damaged_dir, name)).st_mtime_ns > mtime_ns:
                    return True
            except FileNotFoundError:
                pass
        return False

    def clear_set_aside(self):
        """Remove the chunks set aside, once their images are extracted again."""
        for name in self.set_aside_chunks():
            os.remove(os.path.join(self.damaged_dir, name))

    def damaged(self, names):
        """The chunks of ``names`` that are damaged, with the reason: dict of str to str.

        A chunk whose size and modification time are those the catalog recorded is taken as
        whole (one ``stat``); any other is opened and read in full, its checksums checked.
        """
        recorded = self._read_catalog_stats()
        found = {}
        for name in names:
            path = os.path.join(self.chunk_dir, name)
            try:
                stat = os.stat(path)
            except OSError as exc:
                found[name] = exc.strerror or "cannot be read"
                continue
            if recorded.get(name) == (stat.st_size, stat.st_mtime_ns) and os.access(path, os.R_OK):
                continue
            problem = chunk_problem(path)
            if problem:
                found[name] = problem
        return found

    def scan(self):
        """Read the keys of every committed chunk: from the catalog, and from the chunks
        written since it (only those are opened).

        Returns
        -------
        done : dict of str to (str, int)
            Key -> (chunk name, row) of every image with descriptors.
        rejected : dict of str to (str, str)
            Key -> (chunk name, reason) of every image that could not be decoded: its chunk too,
            so that the rejections of a chunk set aside are tried again with its images.
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
            try:
                with h5py.File(os.path.join(self.chunk_dir, name), "r") as f:
                    keys = read_strings(f["keys"])
                    reasons = read_strings(f["rejected_reasons"])
                    rejected_keys = read_strings(f["rejected_keys"])
            except (OSError, KeyError) as exc:
                self.set_aside(name, read_problem(exc))
                continue
            done.update((key, (name, row)) for row, key in enumerate(keys))
            rejected.update((key, (name, reason)) for key, reason in zip(rejected_keys, reasons))
            read.add(name)
        return done, rejected, read

    def _read_catalog(self):
        try:
            with h5py.File(self.catalog_path, "r") as f:
                chunk_names = read_strings(f["chunk_names"])
                if "rejected_chunk" not in f:  # made by an earlier version: read every chunk once
                    logger.info(
                        "the feature store's catalog does not say where its rejections are: every chunk is read"
                    )
                    return {}, {}, set()
                done = dict(zip(read_strings(f["keys"]), zip(chunk_names[f["chunk"][:]], f["row"][:].tolist())))
                rejected = dict(
                    zip(
                        read_strings(f["rejected_keys"]),
                        zip(chunk_names[f["rejected_chunk"][:]], read_strings(f["rejected_reasons"])),
                    )
                )
                return done, rejected, set(chunk_names)
        except (OSError, KeyError, IndexError) as exc:  # none yet, or unreadable: every chunk is read
            if os.path.exists(self.catalog_path):
                logger.warning("the feature store's catalog is unreadable (%s): every chunk is read", read_problem(exc))
            return {}, {}, set()

    def _read_catalog_stats(self):
        """Chunk name -> (size, mtime_ns) as the catalog recorded them."""
        try:
            with h5py.File(self.catalog_path, "r") as f:
                sizes, times = f["chunk_sizes"][:].tolist(), f["chunk_mtimes"][:].tolist()
                return dict(zip(read_strings(f["chunk_names"]), zip(sizes, times)))
        except (OSError, KeyError):  # none yet, or unreadable
            return {}

    def update_catalog(self):
        """Scan the store and record what every chunk holds in one file, so that the next scan
        opens only the chunks written after it (at a million images, some 60,000 files).
        Only one process may call it at a time: the one that indexes a run, after its shards.

        Returns
        -------
        done, rejected : as :meth:`scan`
        """
        done, rejected, read = self._scan()
        stats = {}
        for name in sorted(read):
            try:
                stat = os.stat(os.path.join(self.chunk_dir, name))
                stats[name] = (stat.st_size, stat.st_mtime_ns)
            except FileNotFoundError:  # set aside since the catalog listed it: its images are not done
                pass
        done = {key: place for key, place in done.items() if place[0] in stats}
        rejected = {key: place for key, place in rejected.items() if place[0] in stats}
        names = sorted(stats)
        number = {name: i for i, name in enumerate(names)}
        with atomic_path(self.catalog_path) as tmp:
            with create(tmp) as f:
                write_strings(f, "chunk_names", names)
                f.create_dataset("chunk_sizes", data=np.array([stats[n][0] for n in names], dtype=np.int64))
                f.create_dataset("chunk_mtimes", data=np.array([stats[n][1] for n in names], dtype=np.int64))
                write_strings(f, "keys", list(done))
                f.create_dataset("chunk", data=np.array([number[c] for c, _ in done.values()], dtype=np.int64))
                f.create_dataset("row", data=np.array([r for _, r in done.values()], dtype=np.int64))
                write_strings(f, "rejected_keys", list(rejected))
                f.create_dataset(
                    "rejected_chunk", data=np.array([number[c] for c, _ in rejected.values()], dtype=np.int64)
                )
                write_strings(f, "rejected_reasons", [reason for _, reason in rejected.values()])
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
        with atomic_path(os.path.join(self.chunk_dir, name)) as tmp, create(tmp) as f:
            write_strings(f, "keys", keys)
            codes, offset, scale = quantize(descriptors)
            # not compressed: gzip level 1 saved 8 % of the bytes for 3.3 ms per image (docs/performance.md);
            # checksummed, so that a flipped byte is found as the chunk is read
            for dataset, data in (("codes", codes), ("offset", offset), ("scale", scale)):
                rows = (1, *data.shape[1:]) if data.size else None  # an image per HDF5 chunk, read alone
                f.create_dataset(dataset, data=data, fletcher32=True, chunks=rows)
            write_strings(f, "rejected_keys", list(rejected))
            write_strings(f, "rejected_reasons", list(rejected.values()))
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
            failed.append((f.relpath, rejected[f.key][1]))
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
    with create(path) as f:
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


def chunk_problem(path):
    """Why the chunk at ``path`` cannot be read whole (its checksums included), or None."""
    try:
        with h5py.File(path, "r") as f:
            keys = read_strings(f["keys"])
            shapes = {name: f[name][()].shape for name in ("codes", "offset", "scale")}
            read_strings(f["rejected_keys"]), read_strings(f["rejected_reasons"])
    except (OSError, KeyError, ValueError) as exc:
        return read_problem(exc)
    if not len(keys) == shapes["codes"][0] == shapes["offset"][0] == shapes["scale"][0]:
        return f"{len(keys)} keys for {shapes['codes'][0]} rows of descriptors"
    return None


class DamagedChunk(ArtifactError):
    """A chunk of the feature store was found damaged as it was read (and set aside)."""


def read_block(store, index, positions):
    """Descriptors of the images at ``positions``: ndarray of shape (n, n_local, c), float32.

    Raises
    ------
    DamagedChunk
        When a chunk cannot be read or its checksums fail: it is set aside, and the next run
        extracts its images again.
    """
    chunks = index.chunk[positions]
    out = None
    for name in dict.fromkeys(chunks):  # chunks in order of first use
        mine = np.flatnonzero(chunks == name)
        try:
            with h5py.File(os.path.join(store.chunk_dir, name), "r") as f:
                if out is None:
                    out = np.empty((len(positions), *f["codes"].shape[1:]), dtype=np.float32)
                rows = index.row[positions[mine]]
                order = np.argsort(rows)
                rows = rows[order]  # h5py reads increasing rows
                dequantize(f["codes"][rows], f["offset"][rows], f["scale"][rows], out, mine[order])
        except (OSError, KeyError) as exc:
            store.set_aside(name, read_problem(exc))
            raise DamagedChunk(
                f"feature chunk {name} of {store.root} is damaged ({read_problem(exc)}); it is set aside: run again "
                "to extract its images anew"
            ) from None
    return out
