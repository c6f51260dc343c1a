"""similarities.hdf5: every image's nearest neighbours keyed to the CMS's database IDs."""

import datetime

import h5py
import numpy as np

from . import __version__
from .h5io import read_attrs, read_ids, read_strings, write_ids, write_strings


def write_similarities(path, ids, ppn, filename, neighbours, distances, attrs):
    """Write the similarities file.

    Parameters
    ----------
    path : str
    ids : ndarray of shape (n,)
        Database IDs, int64 or str.
    ppn, filename : ndarray of shape (n,), str
        Record (without the "PPN" prefix) and file name of each image.
    neighbours : ndarray of shape (n, k), int64
        Positions of each image's neighbours, nearest first.
    distances : ndarray of shape (n, k)
    attrs : dict
        File attributes (k, metric, model, ...); ``created`` and ``pipeline_version`` are added.
    """
    ids, ppn, filename = np.asarray(ids), np.asarray(ppn, dtype=str), np.asarray(filename, dtype=str)
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        f.attrs["k"] = neighbours.shape[1]
        f.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        f.attrs["pipeline_version"] = __version__
        write_ids(f, "ids", ids)
        write_ids(f, "neighbours", ids[neighbours])
        f.create_dataset("distances", data=distances.astype(np.float32))
        write_strings(f, "ppn", ppn)
        write_strings(f, "filename", filename)
        # the layout the CMS's loader reads: per neighbour [ppn, filename] as byte strings
        pairs = np.stack([ppn[neighbours], filename[neighbours]], axis=-1)
        f.create_dataset("similarities", data=np.char.encode(pairs, "utf-8"))


def read_similarities(path):
    """Read a similarities file into a dict of arrays (strings as str) plus ``attrs``."""
    with h5py.File(path, "r") as f:
        result = {
            "ids": read_ids(f["ids"]),
            "neighbours": read_ids(f["neighbours"]),
            "distances": f["distances"][:],
            "ppn": read_strings(f["ppn"]),
            "filename": read_strings(f["filename"]),
            "similarities": np.char.decode(f["similarities"][:], "utf-8"),
        }
    result["attrs"] = read_attrs(path)
    return result
