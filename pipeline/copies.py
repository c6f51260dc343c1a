"""Copies of one picture across the collection: groups of images closer than a threshold that
cannot chain, numbered stably from one night to the next.

"Closer" is one of two measures. With re-ranked lists (``[neighbours] rerank = on``), it is the
geometric verification (``pipeline.verify``): two images are as far apart as 1 / their pair's
score, and the threshold is the self-check's verification threshold (:func:`by_verification`).
Otherwise it is the distance of the histograms, and the threshold the ``QUANTILE`` of the
distances at which the self-check's altered copies find their original (:func:`by_distance`);
or a site's own.

Two images are linked when each is in the other's list within the threshold, or one is in the
other's (verified pairs: a verification is no nearest-neighbour accident), unless one's whole
list is within it (a blank page); a set of linked images is a group only when no two of its
images are farther apart than the threshold and no two were judged wrong, else complete
linkage cuts it until every group holds to that."""

import dataclasses
import hashlib
import json
import logging

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from .errors import ConfigError, named
from .h5io import atomic_path, create, read_ids, read_strings, write_ids, write_strings

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
            f"{named('copies_threshold')} = auto needs altered copies that find their original, and the self-check found "
            f"none; raise {named('selfcheck_sample')} or set {named('copies_threshold')} to a distance"
        )
    return float(np.quantile(distances, quantile, method="lower"))  # a distance that was measured


def by_distance(histograms):
    """The ``pairwise`` of :func:`copy_groups` by the histograms' distance: ``histograms(rows)`` gives
    the weighted histograms of the images at ``rows`` (``WeightedHistograms.subset``, or a partial read)."""

    def pairwise(rows):
        data = histograms(rows)
        return lambda local: _pair_distances(data.subset(local), np.arange(len(local)))

    return pairwise


def by_verification(verifier):
    """The ``pairwise`` of :func:`copy_groups` by geometric verification: two images are 1 / the
    lesser score of their pair, either way round, apart (``pipeline.verify.Verifier`` of the collection)."""

    def pairwise(rows):
        def apart(local):
            members = np.asarray(rows)[local]
            m = len(members)
            others = np.broadcast_to(members, (m, m))
            scores = verifier.scores(members, others)[0]
            return as_distance(np.minimum(scores, scores.T))

        return apart

    return pairwise


def as_distance(scores):
    """Verification scores as the distances of :func:`copy_groups`: 1 / score (inf for none)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(scores, dtype=np.float64)


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


def linked_components(neighbours, distances, threshold, max_component=MAX_COMPONENT, mutual=True):
    """The sets of images joined by links within ``threshold`` (see the module): mutual ones, or
    (not ``mutual``) either way.

    Returns
    -------
    components : list of ndarray of int64
        Each set's positions, increasing, for the sets of 2 to ``max_component`` images.
    crowded : int
        Images left out because every image of their list is within the threshold.
    left_out : int
        Sets of more than ``max_component`` images, left out.
    """
    n, k = neighbours.shape
    # an image whose whole list lies within the threshold has more near-identical images than a
    # list can show: a blank or uniform page far more often than a picture (benchmarks.copies)
    crowded = (distances <= threshold).all(axis=1) & (neighbours >= 0).all(axis=1)
    rows = np.repeat(np.arange(n), k)
    close = (distances.ravel() <= threshold) & (neighbours.ravel() >= 0) & ~np.repeat(crowded, k)
    linked = sp.csr_matrix((np.ones(int(close.sum()), dtype=np.int8), (rows[close], neighbours.ravel()[close])), (n, n))
    _, component = connected_components(linked.multiply(linked.T) if mutual else linked, directed=False)
    sizes = np.bincount(component, minlength=n)
    order = np.argsort(component, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    chosen = np.flatnonzero((sizes >= 2) & (sizes <= max_component))
    return [order[starts[c] : starts[c + 1]] for c in chosen], int(crowded.sum()), int((sizes > max_component).sum())


def split_component(pair, threshold, apart=()):
    """The groups of one set of linked images: the whole set when no two of its images are
    farther apart than ``threshold`` and none of ``apart`` is in it, else complete linkage's cut.

    Parameters
    ----------
    pair : ndarray of shape (m, m)
        How far apart each two of the set's images are (its diagonal 0).
    apart : iterable of (int, int)
        Pairs of the set's images (positions in it) judged wrong.

    Returns
    -------
    list of ndarray of int64
        Positions in the set of each group of two or more, increasing.
    """
    members = np.arange(len(pair))
    pair = np.array(pair, dtype=np.float64)
    np.fill_diagonal(pair, 0.0)
    for a, b in apart:
        pair[a, b] = pair[b, a] = np.inf
    if pair.max() <= threshold:
        return [members]
    finite = pair[np.isfinite(pair)]
    cut = np.where(np.isinf(pair), 2 * max(threshold, finite.max()) + 1.0, pair)  # linkage takes finite distances
    labels = fcluster(linkage(squareform(cut, checks=False), method="complete"), t=threshold, criterion="distance")
    return [part for part in (members[labels == label] for label in np.unique(labels)) if len(part) >= 2]


def component_key(basis, ids, keys, members, apart):
    """What a set's groups depend on: ``basis`` (the histograms' weighting and the threshold), its
    images' IDs and histogram keys, and its pairs judged wrong (positions of ``members``)."""
    h = hashlib.sha1(basis.encode())
    h.update("\n".join(f"{ids[p]}\t{keys[p]}" for p in members).encode())
    h.update("\n".join(sorted(f"{ids[members[a]]}\t{ids[members[b]]}" for a, b in apart)).encode())
    return h.hexdigest()[:24]


@dataclasses.dataclass
class Grouping:
    """The night's groups of copies (:func:`copy_groups`)."""

    groups: list
    """Each group's positions, increasing; the groups in the order of their first position."""
    crowded: int
    """Images left out because every image of their list is within the threshold."""
    left_out: int
    """Sets of more than ``max_component`` linked images, left out."""
    keys: list
    """Each group's :func:`component_key` (that of its set of linked images)."""
    settled: list
    """The keys of the sets that gave no group."""
    regrouped: int
    """Sets whose groups were worked out tonight; the others were known."""
    sets: int
    """Sets of linked images."""


def copy_groups(
    neighbours,
    distances,
    threshold,
    pairwise,
    wrong=(),
    ids=None,
    keys=None,
    basis="",
    known=None,
    max_component=MAX_COMPONENT,
    mutual=True,
):
    """The groups of copies (see the module); only the sets of linked images not in ``known``
    are worked out, so a night's cost beyond one pass over the lists follows what changed.

    Parameters
    ----------
    neighbours : ndarray of shape (n_images, k), int
        Each image's list, positions.
    distances : ndarray of shape (n_images, k), float
        How far apart each image and its listed ones are (distances, or :func:`as_distance`).
    threshold : float
    pairwise : callable
        ``pairwise(positions)`` -> ``apart(local)``: how far apart each two of the images at
        ``positions[local]`` are (a square matrix); called once, with the images of every set to
        work out (:func:`by_distance`, :func:`by_verification`).
    wrong : iterable of (int, int)
        Pairs of positions judged wrong.
    ids, keys : ndarray of shape (n_images,), optional
        The images' IDs and histogram keys, for :func:`component_key` (with ``known``).
    basis : str
        What else the groups depend on (see :func:`component_key`).
    known : dict, optional
        Component key -> its groups as lists of IDs: an earlier night's (:func:`known_sets`).
    max_component : int
    mutual : bool
        Links need both images in the other's list (distances), or one (verified pairs).

    Returns
    -------
    Grouping
    """
    components, crowded, left_out = linked_components(neighbours, distances, threshold, max_component, mutual)
    where = np.full(len(neighbours), -1, dtype=np.int64)
    for c, members in enumerate(components):
        where[members] = c
    apart = [[] for _ in components]  # each set's pairs judged wrong, positions within the set
    for a, b in wrong:
        if where[a] >= 0 and where[a] == where[b]:
            members = components[where[a]]
            apart[where[a]].append(tuple(np.searchsorted(members, [a, b]).tolist()))
    use_keys = known is not None or keys is not None
    set_keys = [component_key(basis, ids, keys, m, ap) if use_keys else None for m, ap in zip(components, apart)]
    found = {}  # set -> its groups, positions
    if known:
        at = {str(i): p for p, i in enumerate(np.asarray(ids).astype(str))}
        for c, key in enumerate(set_keys):
            if key in known:
                found[c] = [np.array(sorted(at[str(i)] for i in group), dtype=np.int64) for group in known[key]]
    todo = [c for c in range(len(components)) if c not in found]
    if todo:
        rows = np.sort(np.concatenate([components[c] for c in todo]))
        apart_of = pairwise(rows)
        for c in todo:
            pair = apart_of(np.searchsorted(rows, components[c]))
            found[c] = [components[c][part] for part in split_component(pair, threshold, apart[c])]
    order = sorted((int(g[0]), c, g) for c in found for g in found[c])
    groups = [g for _, _, g in order]
    if crowded:
        logger.info(
            "%d images are left out of the copies: all %d of their neighbours are within the threshold (blank or "
            "uniform pages)",
            crowded,
            neighbours.shape[1],
        )
    if left_out:
        logger.warning(
            "%d sets of more than %d linked images are left out of the copies (blank or uniform pages, or a "
            "threshold too high)",
            left_out,
            max_component,
        )
    return Grouping(
        groups,
        crowded,
        left_out,
        [set_keys[c] for _, c, _ in order],
        [set_keys[c] for c in found if not found[c]],
        len(todo),
        len(components),
    )


def known_sets(numbered, settled):
    """The sets an earlier night worked out (:attr:`Grouping.keys` saved with its rows, and
    :attr:`Grouping.settled`): component key -> groups as lists of IDs (for :func:`copy_groups`)."""
    known = {key: [] for key in settled}
    for (key, _), rows in numbered.rows.groupby(["set", "group"], sort=False):
        if key:
            known.setdefault(key, []).append(rows["image_id"].astype(str).tolist())
    return known


@dataclasses.dataclass
class Numbered:
    """The night's groups with stable numbers: a row per image in a group."""

    rows: pd.DataFrame
    """Columns COLUMNS, by group then image ID."""
    next_group: int
    """The number the next new group gets (numbers are never reused)."""
    new_groups: list
    """Numbers of the groups new tonight."""


def number_groups(groups, ids, ppn, filename, date, previous=None, next_group=1, sets=None):
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
    sets : list of str, optional
        Each group's set key (:attr:`Grouping.keys`), kept in the rows' column ``set``.
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
    sets = [""] * len(groups) if sets is None else sets
    rows = [
        (number[index], ids[p], ppn[p], filename[p], earlier_seen.get((number[index], ids_str[p]), date), sets[index])
        for index, members in enumerate(groups)
        for p in members
    ]
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "set"])
    frame["image_id"] = frame["image_id"].astype(np.asarray(ids).dtype) if len(frame) else frame["image_id"]
    frame = frame.sort_values(["group", "image_id"], kind="stable").reset_index(drop=True)
    return Numbered(frame, next_group, sorted(new_groups))


def save_copies(path, numbered, attrs, settled=()):
    """Write the night's groups (:class:`Numbered`, with their set keys) and the keys of the sets
    that gave no group (:attr:`Grouping.settled`) to an HDF5 file with ``attrs``."""
    rows = numbered.rows
    with create(path) as f:
        f.attrs.update({**attrs, "next_group": numbered.next_group, "new_groups": json.dumps(numbered.new_groups)})
        f.create_dataset("group", data=rows["group"].to_numpy(dtype=np.int64))
        write_ids(f, "image_id", rows["image_id"].to_numpy())
        for column in ("ppn", "filename", "first_seen", "set"):
            write_strings(f, column, rows[column].astype(str).tolist())
        write_strings(f, "settled", list(settled))


def load_copies(path):
    """(:class:`Numbered`, the settled set keys) of :func:`save_copies`, or None when the file is
    missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            frame = pd.DataFrame({"group": f["group"][:], "image_id": read_ids(f["image_id"])})
            for column in ("ppn", "filename", "first_seen"):
                frame[column] = read_strings(f[column])
            frame["set"] = read_strings(f["set"]) if "set" in f else ""  # none known: worked out again
            settled = read_strings(f["settled"]).tolist() if "settled" in f else []
            return Numbered(frame, int(f.attrs["next_group"]), json.loads(f.attrs["new_groups"])), settled
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


def night_groups(result, threshold, source, pairwise, basis, earlier, date):
    """A night's groups of copies from its lists, numbered as the earlier night numbered them:
    from the short lists' verified pairs when the lists were re-ranked, else from the lists'
    distances.

    Parameters
    ----------
    result : dict
        The night's similarities (:func:`pipeline.output.read_similarities`).
    threshold : float
        The verification score a pair of copies reaches (re-ranked lists), or the distance within
        which images are copies; ``source`` says where it came from.
    pairwise : callable
        For :func:`copy_groups`: :func:`by_verification` or :func:`by_distance`, as the lists were made.
    basis : str
        What a set's groups depend on besides its images (the words, weights and distance).
    earlier : (Numbered, settled set keys) or None
        The earlier night's copies (:func:`load_copies`).
    date : str
        The night's date (ISO), for the new groups' ``first_seen``.

    Returns
    -------
    numbered : Numbered
    grouping : the :func:`copy_groups` result
    summary : dict
        What copies.h5 records of the night's groups.
    """
    ids, keys = result["ids"], result.get("keys", result["ids"].astype(str))
    at = pd.Index(ids)
    verified = "candidates" in result
    lists = result["candidates"] if verified else result["neighbours"]
    listed = at.get_indexer(lists.ravel()).reshape(lists.shape)
    apart = as_distance(result["candidate_scores"]) if verified else result["distances"]
    within = 1.0 / threshold if verified else threshold
    verdicts = result["verdicts"]
    a, b = at.get_indexer(verdicts.image_id), at.get_indexer(verdicts.similar_image_id)
    wrong = [(x, y) for x, y, right in zip(a, b, verdicts.right) if x >= 0 and y >= 0 and not right]
    known = known_sets(*earlier) if earlier else {}
    grouping = copy_groups(
        listed, apart, within, pairwise, wrong, ids=ids, keys=keys, basis=basis, known=known, mutual=not verified
    )
    numbered = number_groups(
        grouping.groups,
        ids,
        result["ppn"],
        result["filename"],
        date,
        earlier[0].rows if earlier else None,
        earlier[0].next_group if earlier else 1,
        sets=grouping.keys,
    )
    summary = {
        "threshold": threshold,
        "threshold_source": source,
        "measure": "verification" if verified else "distance",
        "groups": len(grouping.groups),
        "images": int(sum(len(g) for g in grouping.groups)),
        "spanning_records": len(spanning(numbered.rows)),
        "new": len(numbered.new_groups),
        "crowded": grouping.crowded,
        "left_out": grouping.left_out,
        "sets": grouping.sets,
        "regrouped": grouping.regrouped,
    }
    logger.info(
        "%d groups of copies (%d images, %d spanning several records, %d new) at %s %.4g (%s); "
        "%d of %d sets of linked images worked out, the others as the earlier night left them",
        summary["groups"],
        summary["images"],
        summary["spanning_records"],
        summary["new"],
        "verification score" if verified else "distance",
        threshold,
        source,
        grouping.regrouped,
        grouping.sets,
    )
    return numbered, grouping, summary
