"""similarities.hdf5: every image's nearest neighbours keyed to the CMS's database IDs."""

import datetime
import logging

import h5py
import numpy as np
import pandas as pd

from . import __version__
from .h5io import create, read_attrs, read_ids, read_strings, write_ids, write_strings
from .verdicts import Verdicts
from .verify import pair_codes

logger = logging.getLogger(__name__)

#: The ID a short list holds where it is shorter (fewer images than its length may be listed), by
#: the IDs' kind: no image has it.
MISSING_ID = {"i": -1, "u": -1, "U": "", "O": ""}


def write_similarities(
    path,
    ids,
    ppn,
    filename,
    neighbours,
    distances,
    attrs,
    keys=None,
    earlier=None,
    raw=None,
    verdicts=None,
    short=None,
):
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
    keys : ndarray of shape (n,), str, optional
        Identity of each image's histogram (path and fingerprint): what the next run's
        :class:`Earlier` tells changed images by.
    earlier : Earlier, optional
        The earlier run's similarities: which rows differ from them (``changed``, one bool per
        row: a new image or another list) and which of their images are gone (``removed``, IDs)
        are stored, with the earlier file's digest as ``earlier_digest``.
    raw : (rows, neighbours, distances), optional
        The raw lists (the k nearest, before the verdicts) of the judged images at ``rows``,
        whose ``neighbours`` are their lists under the verdicts: ``raw_rows``, ``raw_neighbours``
        (IDs) and ``raw_distances``.
    verdicts : pipeline.verdicts.Verdicts, optional
        The verdicts the lists honour: ``verdict_image_id``, ``verdict_similar_image_id``,
        ``verdict_right``, for the next run (what changed) and the query command.
    short : pipeline.search.Lists, optional
        With re-ranking, the short lists the lists were ranked from, of every image (rows in
        order): ``candidates``, ``candidate_distances`` and ``candidate_scores`` under the
        verdicts, and ``raw_candidates`` (with their distances and scores) of the judged images
        at ``raw_rows``: what the next run searches and verifies only where they changed.
    """
    ids, ppn, filename = np.asarray(ids), np.asarray(ppn, dtype=str), np.asarray(filename, dtype=str)
    k = neighbours.shape[1]
    with create(path) as f:
        f.attrs.update(attrs)
        f.attrs["k"] = k
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
        if keys is not None:
            write_strings(f, "keys", keys)
        if raw is not None:
            rows, raw_neighbours, raw_distances = raw
            f.create_dataset("raw_rows", data=np.asarray(rows, dtype=np.int64))
            write_ids(f, "raw_neighbours", ids[np.asarray(raw_neighbours, dtype=np.int64).reshape(-1, k)])
            f.create_dataset("raw_distances", data=np.asarray(raw_distances).reshape(-1, k).astype(np.float32))
        if short is not None:
            candidates, candidate_distances = short.assembled()
            raw_candidates, raw_candidate_distances = short.judged_raw()
            for name, lists, d, scores in (
                ("candidates", candidates, candidate_distances, short.scores),
                ("raw_candidates", raw_candidates, raw_candidate_distances, short.raw_scores),
            ):
                write_ids(f, name, np.where(lists >= 0, ids[np.maximum(lists, 0)], MISSING_ID[ids.dtype.kind]))
                f.create_dataset(name.replace("candidates", "candidate_distances"), data=d.astype(np.float32))
                f.create_dataset(name.replace("candidates", "candidate_scores"), data=scores.astype(np.float32))
        if verdicts is not None:
            write_ids(f, "verdict_image_id", verdicts.image_id.astype(ids.dtype))
            write_ids(f, "verdict_similar_image_id", verdicts.similar_image_id.astype(ids.dtype))
            f.create_dataset("verdict_right", data=np.asarray(verdicts.right, dtype=bool))
        if earlier is not None:
            f.attrs["earlier_digest"] = earlier.digest
            f.create_dataset("changed", data=earlier.changed(ids[neighbours], f["distances"][:]))
            write_ids(f, "removed", earlier.removed)


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
        if "changed" in f:  # compared with an earlier run's (see write_similarities)
            result["changed"], result["removed"] = f["changed"][:], read_ids(f["removed"])
        if "keys" in f:  # what each list depends on besides the others' histograms
            result["keys"] = read_strings(f["keys"])
        if "raw_rows" in f:
            result["raw_rows"], result["raw_neighbours"] = f["raw_rows"][:], read_ids(f["raw_neighbours"])
            result["raw_distances"] = f["raw_distances"][:]
        if "candidates" in f:  # the short lists of re-ranked lists, and their verification scores
            result["candidates"], result["candidate_scores"] = read_ids(f["candidates"]), f["candidate_scores"][:]
        result["verdicts"] = _honoured(f)
    result["attrs"] = read_attrs(path)
    return result


def _honoured(f):
    """The verdicts an open similarities file honours (:class:`pipeline.verdicts.Verdicts`, without
    times and authors; none for a file from before verdicts)."""
    if "verdict_right" not in f:
        return Verdicts.empty()
    ids = (read_ids(f["verdict_image_id"]), read_ids(f["verdict_similar_image_id"]))
    return Verdicts(*ids, f["verdict_right"][:].astype(bool), np.array([], dtype=str), np.array([], dtype=str))


def honoured_verdicts(path):
    """The verdicts the lists of the similarities file at ``path`` honour (see :func:`_honoured`)."""
    with h5py.File(path, "r") as f:
        return _honoured(f)


def raw_lists(result):
    """Every image's raw list (IDs, nearest first) from :func:`read_similarities`: its list, or
    for a judged image the list it had before the verdicts were applied."""
    lists = result["neighbours"].copy()
    if "raw_rows" in result and len(result["raw_rows"]):
        lists = lists.astype(np.result_type(lists.dtype, result["raw_neighbours"].dtype))
        lists[result["raw_rows"]] = result["raw_neighbours"]
    return lists


def block_rows(n, shard, shards):
    """The positions of block ``shard`` of ``shards`` equal blocks of n images: a neighbour shard's rows."""
    return np.arange(shard * n // shards, (shard + 1) * n // shards)


def lists_summary(neighbours, judged, raw, records, settings, honoured):
    """What the night's lists say of themselves, for similarities.hdf5's attributes and the log.

    Parameters
    ----------
    neighbours : ndarray of shape (n, k)
        Positions of each image's neighbours, under the verdicts.
    judged, raw : ndarray
        The judged images' positions and raw lists (:func:`pipeline.search.gather_neighbours`).
    records : ndarray of shape (n,)
        Each image's catalogue record.
    settings : NeighbourSettings
    honoured : Verdicts
        The verdicts the lists honour.
    """
    changed = int((neighbours[judged] != raw).any(axis=1).sum())
    own = float((records[neighbours] == records[:, None]).mean()) if len(neighbours) else 0.0
    logger.info(
        "%.1f %% of the neighbours are of the image's own record (same_record = %s)", 100 * own, settings.same_record
    )
    if len(honoured):
        logger.info(
            "%d verdicts honoured: the lists of %d of the %d judged images differ from their raw lists",
            len(honoured),
            changed,
            len(judged),
        )
    return {
        "metric": settings.distance.metric,
        "weighting": settings.distance.weighting,
        "power": settings.distance.power,
        "verdicts": len(honoured),
        "judged": len(judged),
        "changed_by_verdicts": changed,
        "same_record": str(settings.same_record),
        "own_record_share": round(own, 4),
    }


class Earlier:
    """The lists of an earlier run's similarities file, seen from the collection now.

    Parameters
    ----------
    path : str
        The earlier similarities.hdf5.
    ids, keys : ndarray of shape (n,)
        The images now: database IDs and histogram identities (see :func:`write_similarities`).
        An image is the same as an earlier one when both its ID and its key are; otherwise it
        is new (or changed), and the earlier one is gone.

    Attributes
    ----------
    digest : str
        The earlier file's digest.
    now : ndarray of shape (n_earlier,), int64
        Position now of each earlier image, -1 when gone or changed.
    new : ndarray of shape (n,), bool
        Images now that are not the same as an earlier one.
    removed : ndarray
        IDs of the earlier images that no image now has.
    """

    def __init__(self, path, ids, keys):
        with h5py.File(path, "r") as f:
            earlier_ids, listed, self._distances = read_ids(f["ids"]), read_ids(f["neighbours"]), f["distances"][:]
            earlier_keys = read_strings(f["keys"])
            self.digest = str(f.attrs["digest"])
            raw = (f["raw_rows"][:], read_ids(f["raw_neighbours"])) if "raw_rows" in f else None
            self._verdicts = _honoured(f)
            self._scores = None
            short = listed
            if "candidates" in f:  # re-ranked lists: the next night starts from their short lists
                short, raw = read_ids(f["candidates"]), (raw[0], read_ids(f["raw_candidates"]))
                self._scores = (f["candidate_scores"][:], f["raw_candidate_scores"][:])
        ids, keys = np.asarray(ids), np.asarray(keys, dtype=str)
        by_id = pd.Index(ids).get_indexer(earlier_ids)
        same = by_id >= 0
        same &= keys[np.maximum(by_id, 0)] == earlier_keys
        self.now = np.where(same, by_id, -1)
        self.new = np.ones(len(ids), dtype=bool)
        self.new[self.now[same]] = False
        self.removed = earlier_ids[by_id < 0]
        earlier_index = pd.Index(earlier_ids)
        listed_at = earlier_index.get_indexer(short.ravel()).reshape(short.shape)
        self._raw_at = listed_at.copy()
        self._raw_rows = raw[0] if raw is not None else np.zeros(0, dtype=np.int64)
        if raw is not None and len(raw[0]):
            self._raw_at[raw[0]] = earlier_index.get_indexer(raw[1].ravel()).reshape(raw[1].shape)
        self._lists = (self.now, listed_at, ids, listed)

    def previous(self, final=False):
        """Each image's earlier raw list (``final``: its list under the earlier verdicts) as
        positions now (-1: gone or changed); rows of new images all -1."""
        now, listed_at, ids, _ = self._lists
        at = listed_at if final else self._raw_at
        previous = np.full((len(ids), at.shape[1]), -1, dtype=np.int64)
        kept = now >= 0
        previous[now[kept]] = now[at[kept]]
        return previous

    @property
    def width(self):
        """The length of the earlier lists the search starts from (the short lists', with re-ranking)."""
        return self._lists[1].shape[1]

    def known_scores(self):
        """The verification scores of the earlier short lists' pairs whose images are both unchanged:
        (codes, scores) over the positions now, codes increasing (``pipeline.verify.pair_codes``),
        or None when the earlier lists were not re-ranked."""
        if self._scores is None:
            return None
        now, listed_at, ids, _ = self._lists
        at = np.concatenate([listed_at, self._raw_at[self._raw_rows]])
        rows = np.concatenate([np.arange(len(listed_at)), self._raw_rows])
        scores = np.concatenate(self._scores)
        other = np.where(at >= 0, now[np.maximum(at, 0)], -1)
        kept = (now[rows][:, None] >= 0) & (other >= 0)
        codes = pair_codes(now[rows], np.maximum(other, 0), len(ids))[kept]
        codes, first = np.unique(codes, return_index=True)
        return codes, scores[kept][first].astype(np.float64)

    def judgements(self):
        """The verdicts the earlier lists honoured, over the positions now (by database ID: a
        changed image keeps its verdicts): :class:`pipeline.verdicts.Judgements`."""
        return self._verdicts.judgements(self._lists[2])

    def changed(self, neighbour_ids, distances):
        """Which images now have a list (``neighbour_ids``, IDs, nearest first, and their
        ``distances`` as stored) other than their earlier one, or are new: ndarray of shape (n,), bool."""
        now, _, ids, listed = self._lists
        changed = np.ones(len(ids), dtype=bool)
        kept = now >= 0
        if listed.shape[1] == neighbour_ids.shape[1]:
            other = (listed[kept] != neighbour_ids[now[kept]]) | (self._distances[kept] != distances[now[kept]])
            changed[now[kept]] = other.any(axis=1)
        return changed
