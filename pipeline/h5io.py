"""Small HDF5 helpers shared by every artifact: strings, IDs, attributes, atomic writes."""

import contextlib
import glob
import io
import os
import shutil
import tempfile

import h5py
import numpy as np

STRING = h5py.string_dtype("utf-8")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


@contextlib.contextmanager
def create(path):
    """A new HDF5 file at ``path`` to write in the block: made in memory, then written out whole
    with plain writes as the block ends. HDF5 crashes the process (SIGSEGV) when its own write
    meets a full disk and the file is closed, while a plain write fails with an OSError like any
    other (found by ``benchmarks.soak``); nothing is written at ``path`` when the block fails."""
    memory = io.BytesIO()
    with h5py.File(memory, "w") as f:
        yield f
    with open(path, "wb") as out:
        out.write(memory.getbuffer())


def write_strings(group, name, values):
    """Store a sequence of str as a UTF-8 variable-length string dataset."""
    return group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=STRING)


def read_strings(dataset):
    """Read a UTF-8 string dataset as an ndarray of str."""
    if len(dataset) == 0:
        return np.array([], dtype=str)
    return dataset.asstr()[:].astype(str)


def write_ids(group, name, ids):
    """Store database IDs: int64 as they are, anything else as UTF-8 strings."""
    ids = np.asarray(ids)
    if ids.dtype == np.int64:
        return group.create_dataset(name, data=ids)
    return write_strings(group, name, ids)


def read_ids(dataset):
    """Read IDs written by :func:`write_ids`."""
    if dataset.dtype == np.int64:
        return dataset[:]
    return read_strings(dataset)


def read_attrs(path):
    """Return the file attributes of an HDF5 file as a dict (values as plain Python types)."""
    with h5py.File(path, "r") as f:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def remove_stale_temporaries(path):
    """Remove the temporary files (and folders) that killed writes of ``path`` left behind; return how many."""
    directory, name = os.path.split(os.path.abspath(path))
    stale = glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp"))
    for tmp in stale:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    return len(stale)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name starts with a dot and ends in ``.tmp``, so no reader mistakes it for
    the artifact, and a crash leaves ``path`` as it was.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the artifact the mode a plain open would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_problem(exc):
    """What is wrong with a file h5py could not read: the first line of its error."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]
