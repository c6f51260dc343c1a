"""Which records an image's list may draw from (``same_record``): all, only others, or at most N
of its own record (the PPN, or another catalogue key), and the search of an image's own record.

One rule holds for every search: going down an image's ranking (key, then database ID, as
``pipeline.neighbours``), an image of its own record is taken only while fewer than ``own`` are
in the list, any other image always, until k are. Such lists are the greedy bases of a matroid
(at most ``own`` from the record, k in all), so the list among a union of candidates is the list
among the union of each part's lists. The searches use this twice: the k best of the other
records and the ``own`` best of the image's own record, found apart, merge into the list; and a
night's new images, searched alone, merge into an earlier list.
"""

import dataclasses

import numpy as np

from .errors import ConfigError, named

#: Entries of the dense block of keys the own-record search computes at once.
BLOCK = 1 << 22


@dataclasses.dataclass(frozen=True)
class SameRecord:
    """The ``same_record`` setting: ``keep`` (no limit), ``exclude`` (other records only) or
    ``at_most N`` (at most N of the k from the image's own record)."""

    mode: str = "keep"
    n: int = 0

    @classmethod
    def parse(cls, text):
        """The setting of its text; ConfigError naming the accepted forms otherwise."""
        words = str(text).strip().lower().replace("_", " ").split()
        if words == ["keep"]:
            return cls("keep")
        if words == ["exclude"]:
            return cls("exclude")
        if len(words) == 3 and words[:2] == ["at", "most"] and words[2].isdigit():
            return cls("at_most", int(words[2]))
        raise ConfigError(
            f"{named('same_record')}={text!r} must be keep, exclude or at_most N (N a whole number, "
            "the most neighbours from the image's own record)"
        )

    def __str__(self):
        return f"at_most {self.n}" if self.mode == "at_most" else self.mode

    def own(self, k):
        """The most of an image's k neighbours its own record may give: None (no limit), or 0 .. k - 1."""
        if self.mode == "keep" or (self.mode == "at_most" and self.n >= k):
            return None
        return 0 if self.mode == "exclude" else self.n


def check_records(records, k, own, setting="", names=None):
    """Raise ConfigError when an image of some record has fewer than k images it may list.

    Parameters
    ----------
    records : ndarray of shape (n_images,)
        Each image's record.
    k : int
    own : int or None
        :meth:`SameRecord.own`.
    setting : str
        The setting, for the message.
    """
    if own is None:
        return
    names, sizes = np.unique(np.asarray(records), return_counts=True)
    available = len(records) - sizes + np.minimum(own, sizes - 1)
    worst = int(np.argmin(available)) if len(sizes) else 0
    if len(sizes) and available[worst] < k:
        raise ConfigError(
            f"{named('same_record')}={setting} leaves the {sizes[worst]} images of record {names[worst]} "
            f"{available[worst]} images to list, fewer than {named('k')}={k}; lower it or allow more of an image's own record"
        )


def record_best(data, rows, own, among=None, skip=None):
    """The ``own`` best images of each row's own record, by (key, database ID): the row itself,
    images not ``among`` and those ``skip`` names for the row left out.

    The keys are computed exactly, from the integer dot products of the record's vectors; the
    work is (images of a record)^2 per record.

    Parameters
    ----------
    data : pipeline.weighting.WeightedHistograms
    rows : ndarray of shape (m,), int
    own : int
    among : ndarray of shape (n_images,), bool, optional
        The candidates (all images by default).
    skip : list of m ndarrays of int, optional

    Returns
    -------
    positions : ndarray of shape (m, own), int64, -1 past the last found
    keys : ndarray of shape (m, own), float64, inf there
    """
    rows = np.asarray(rows, dtype=np.int64)
    positions = np.full((len(rows), own), -1, dtype=np.int64)
    keys = np.full((len(rows), own), np.inf)
    if own == 0 or not len(rows):
        return positions, keys
    candidate = np.ones(len(data), dtype=bool) if among is None else np.asarray(among, dtype=bool)
    by_record = np.argsort(data.records, kind="stable")
    starts = np.searchsorted(data.records[by_record], np.arange(data.records.max() + 2))
    for record in np.unique(data.records[rows]):
        members = by_record[starts[record] : starts[record + 1]]
        members = members[candidate[members]]
        if not len(members):
            continue
        asking = np.flatnonzero(data.records[rows] == record)
        step = max(1, BLOCK // len(members))
        for start in range(0, len(asking), step):
            at = asking[start : start + step]
            a = rows[at]
            dots = (data.vectors[a] @ data.vectors[members].T).toarray()
            if data.cosine:
                block = 1.0 - dots.astype(np.float64) / (data.roots[a][:, None] * data.roots[members][None, :])
            else:
                block = (data.norms[a][:, None] + data.norms[members][None, :] - 2 * dots).astype(np.float64)
            block[members[None, :] == a[:, None]] = np.inf
            if skip is not None:
                for j, i in enumerate(at):
                    block[j, np.isin(members, skip[i])] = np.inf
            ranks = np.broadcast_to(data.id_rank[members], block.shape)
            order = np.lexsort((ranks, block), axis=1)[:, :own]
            found, found_keys = members[order], np.take_along_axis(block, order, axis=1)
            found[np.isinf(found_keys)] = -1
            positions[at, : found.shape[1]], keys[at, : found.shape[1]] = found, found_keys
    return positions, keys


def limited_best(data, rows, positions, keys, k, own):
    """Each row's list among its candidates under the rule of the module.

    Parameters
    ----------
    data : pipeline.weighting.WeightedHistograms
    rows : ndarray of shape (m,), int
    positions : ndarray of shape (m, L), int
        Each row's candidates, -1 for none; none twice in a row.
    keys : ndarray of shape (m, L), float64
        Their keys with the row.
    k : int
    own : int, ndarray of shape (m,) of int, or None
        The most of each list from the row's own record (None: no limit).

    Returns
    -------
    positions : ndarray of shape (m, k), int64, -1 past the last
    keys : ndarray of shape (m, k), float64, inf there
    """
    rows, positions = np.asarray(rows, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    valid = positions >= 0
    at = np.maximum(positions, 0)
    keys = np.where(valid, keys, np.inf)
    order = np.lexsort((np.where(valid, data.id_rank[at], len(data)), keys), axis=1)
    positions, keys, valid = (np.take_along_axis(x, order, axis=1) for x in (positions, keys, valid))
    taken = valid
    if own is not None:
        mine = valid & (data.records[np.maximum(positions, 0)] == data.records[rows][:, None])
        limit = np.broadcast_to(np.asarray(own), (len(rows),))[:, None]
        taken = valid & (~mine | (np.cumsum(mine, axis=1) <= limit))
    first = np.argsort(~taken, axis=1, kind="stable")[:, :k]
    positions, keys, taken = (np.take_along_axis(x, first, axis=1) for x in (positions, keys, taken))
    short = k - positions.shape[1]
    positions, keys = np.where(taken, positions, -1), np.where(taken, keys, np.inf)
    if short > 0:
        positions = np.pad(positions, ((0, 0), (0, short)), constant_values=-1)
        keys = np.pad(keys, ((0, 0), (0, short)), constant_values=np.inf)
    return positions, keys
