"""Copies of one picture across the collection: groups of images closer than a threshold, with a
guard against chains, numbered stably from one night to the next.

The rule: two images are linked when each is in the other's list (mutual neighbours) at a
distance of at most the threshold, unless one of them has its whole list within the threshold
(more near-identical images than a list shows: blank or uniform pages). The linked images form components; a component is a group
when no two of its images (by their exact distance, ``pipeline.neighbours``) are farther apart
than the threshold and no curator judged two of them wrong; otherwise complete linkage cuts it
until every group holds to that. So a group never chains unlike pictures through a series of
close pairs, and a pair judged wrong is never in one group. An image in no group has no copy.

The threshold comes from what the run already knows: the distances at which the self-check's
altered copies (crops, rescans, rotations, greyscale, recompression, page borders) find their
original first. It is the ``QUANTILE`` of those distances, chosen for precision by
``python -m benchmarks.copies`` (docs/quality.md), or a site's own ``threshold``.
"""

import dataclasses
import json
import logging

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from .errors import ConfigError
from .h5io import atomic_path, read_ids, read_strings, write_ids, write_strings

logger = logging.getLogger(__name__)

#: The quantile of the self-check's copy-to-original distances taken as the threshold
#: (``python -m benchmarks.copies``, docs/quality.md).
QUANTILE = 0.5
#: Components of more linked images than this are left out, counted and logged: near-identical
#: blank or uniform pages, not copies of one picture a curator would review.
MAX_COMPONENT = 500
COLUMNS = ("group", "image_id", "ppn", "filename", "first_seen")


def selfcheck_threshold(distances, quantile=QUANTILE):
    """The threshold of the self-check's ``distances`` (each altered copy found first, to its original).

    Raises
    ------
    ConfigError
        When the self-check found no original first, so the threshold cannot be told.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if not len(distances):
        raise ConfigError(
            "[copies] threshold = auto needs altered copies that find their original, and the self-check found "
            "none; raise [selfcheck] sample or set [copies] threshold to a distance"
        )
    return float(np.quantile(distances, quantile, method="lower"))  # a distance that was measured


def _pair_distances(data, members):
    """The exact distances between the images at ``members`` (a square matrix)."""
    v = data.vectors[members]
    dots = (v @ v.T).toarray()
    if data.cosine:
        keys = 1.0 - dots.astype(np.float64) / (data.roots[members][:, None] * data.roots[members][None, :])
    else:
        keys = (data.norms[members][:, None] + data.norms[members][None, :] - 2 * dots).astype(np.float64)
    distances = data.distances(keys)
    np.fill_diagonal(distances, 0.0)
    return distances


def copy_groups(data, neighbours, distances, threshold, wrong=(), max_component=MAX_COMPONENT):
    """The groups of copies (see the module).

    Parameters
    ----------
    data : pipeline.neighbours.WeightedHistograms
        The histograms the lists were found with.
    neighbours : ndarray of shape (n_images, k), int
        Each image's list, positions.
    distances : ndarray of shape (n_images, k), float
    threshold : float
    wrong : iterable of (int, int)
        Pairs of positions judged wrong.
    max_component : int

    Returns
    -------
    groups : list of ndarray of int64
        Each group's positions, increasing; the groups in the order of their first position.
    crowded : int
        Images left out because every image of their list is within the threshold.
    left_out : int
        Components of more than ``max_component`` images, left out.
    """
    n, k = neighbours.shape
    # an image whose whole list lies within the threshold has more near-identical images than a
    # list can show: a blank or uniform page far more often than a picture (benchmarks.copies)
    crowded = (distances[:, -1] <= threshold) & (neighbours[:, -1] >= 0)
    rows = np.repeat(np.arange(n), k)
    close = (distances.ravel() <= threshold) & (neighbours.ravel() >= 0) & ~np.repeat(crowded, k)
    linked = sp.csr_matrix((np.ones(int(close.sum()), dtype=np.int8), (rows[close], neighbours.ravel()[close])), (n, n))
    mutual = linked.multiply(linked.T)
    _, component = connected_components(mutual, directed=False)
    sizes = np.bincount(component, minlength=n)
    apart = {}  # component -> its pairs judged wrong
    for a, b in wrong:
        if component[a] == component[b]:
            apart.setdefault(component[a], []).append((a, b))
    groups, left_out = [], 0
    order = np.argsort(component, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(component))])
    for c in np.flatnonzero(sizes >= 2):
        if sizes[c] > max_component:
            left_out += 1
            continue
        members = order[starts[c] : starts[c + 1]]
        pair = _pair_distances(data, members)
        for a, b in apart.get(c, ()):
            i, j = np.searchsorted(members, [a, b])
            pair[i, j] = pair[j, i] = np.inf
        if pair.max() <= threshold:
            groups.append(members)
            continue
        cut = np.where(np.isinf(pair), 2 * threshold + 1.0, pair)  # linkage takes finite distances
        labels = fcluster(linkage(squareform(cut, checks=False), method="complete"), t=threshold, criterion="distance")
        for label in np.unique(labels):
            part = members[labels == label]
            if len(part) >= 2:
                groups.append(part)
    groups.sort(key=lambda g: int(g[0]))
    if crowded.any():
        logger.info(
            "%d images are left out of the copies: all %d of their neighbours are within the threshold (blank or "
            "uniform pages)", int(crowded.sum()), k,
        )  # fmt: skip
    if left_out:
        logger.warning(
            "%d sets of more than %d linked images are left out of the copies (blank or uniform pages, or a "
            "threshold too high)", left_out, max_component,
        )  # fmt: skip
    return groups, int(crowded.sum()), left_out


@dataclasses.dataclass
class Numbered:
    """The night's groups with stable numbers: a row per image in a group."""

    rows: pd.DataFrame
    """Columns COLUMNS, by group then image ID."""
    next_group: int
    """The number the next new group gets (numbers are never reused)."""
    new_groups: list
    """Numbers of the groups new tonight."""


def number_groups(groups, ids, ppn, filename, date, previous=None, next_group=1):
    """Number tonight's ``groups`` so that a group that persists keeps its number.

    Each group takes the number of the earlier group it shares the most images with (each
    earlier number once: where groups split, the part sharing the most keeps it; where they
    merge, the merged group keeps the number of the one it shares the most with); the others
    get new numbers. An image keeps its ``first_seen`` while it stays in its group.

    Parameters
    ----------
    groups : list of ndarray of int
        Positions (:func:`copy_groups`).
    ids, ppn, filename : ndarray of shape (n_images,)
    date : str
        Tonight, ISO.
    previous : DataFrame with columns COLUMNS, optional
        The earlier night's rows.
    next_group : int
        The earlier night's :attr:`Numbered.next_group`.
    """
    ids_str = np.asarray(ids).astype(str)
    earlier_group, earlier_seen = {}, {}
    if previous is not None and len(previous):
        for g, i, seen in zip(previous["group"], previous["image_id"].astype(str), previous["first_seen"]):
            earlier_group[i] = int(g)
            earlier_seen[int(g), i] = seen
        next_group = max(next_group, int(previous["group"].max()) + 1)
    shared = []
    for index, members in enumerate(groups):
        counts = pd.Series([earlier_group.get(i) for i in ids_str[members]]).dropna().astype(int).value_counts()
        shared += [(-int(c), int(g), index) for g, c in counts.items()]
    number, taken = {}, set()
    for _, g, index in sorted(shared):
        if index not in number and g not in taken:
            number[index] = g
            taken.add(g)
    new_groups = []
    for index in range(len(groups)):
        if index not in number:
            number[index] = next_group
            new_groups.append(next_group)
            next_group += 1
    rows = [
        (number[index], ids[p], ppn[p], filename[p], earlier_seen.get((number[index], ids_str[p]), date))
        for index, members in enumerate(groups)
        for p in members
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["image_id"] = frame["image_id"].astype(np.asarray(ids).dtype) if len(frame) else frame["image_id"]
    frame = frame.sort_values(["group", "image_id"], kind="stable").reset_index(drop=True)
    return Numbered(frame, next_group, sorted(new_groups))


def save_copies(path, numbered, attrs):
    """Write the night's groups (:class:`Numbered`) to an HDF5 file with ``attrs``."""
    rows = numbered.rows
    with h5py.File(path, "w") as f:
        f.attrs.update({**attrs, "next_group": numbered.next_group, "new_groups": json.dumps(numbered.new_groups)})
        f.create_dataset("group", data=rows["group"].to_numpy(dtype=np.int64))
        write_ids(f, "image_id", rows["image_id"].to_numpy())
        for column in ("ppn", "filename", "first_seen"):
            write_strings(f, column, rows[column].astype(str).tolist())


def load_copies(path):
    """The :class:`Numbered` groups of :func:`save_copies`, or None when the file is missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            frame = pd.DataFrame({"group": f["group"][:], "image_id": read_ids(f["image_id"])})
            for column in ("ppn", "filename", "first_seen"):
                frame[column] = read_strings(f[column])
            return Numbered(frame, int(f.attrs["next_group"]), json.loads(f.attrs["new_groups"]))
    except (OSError, KeyError, ValueError):
        return None


def write_csv(path, rows):
    """Write the rows as copies.csv (columns COLUMNS), atomically."""
    with atomic_path(path) as tmp:
        rows.to_csv(tmp, index=False, columns=list(COLUMNS))


def read_copies(path):
    """The rows of a copies.csv, or None when it is missing or unreadable."""
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "ppn": str, "filename": str, "first_seen": str})
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if list(frame.columns) != list(COLUMNS):
        return None
    return frame


def spanning(rows):
    """Group number -> its rows, for the groups whose images lie in more than one record."""
    records = rows.groupby("group")["ppn"].nunique()
    return {int(g): rows[rows["group"] == g] for g in records.index[records > 1]}
