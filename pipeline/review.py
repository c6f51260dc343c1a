"""The review queue: the pairs of a run's lists most worth a curator's minute, in order.

Four kinds, each at most ``QUOTA`` pairs, nearest first: copies across records, first
neighbours just past the copy threshold (within ``BAND`` times it), one-sided first
neighbours, and first neighbours of the lists new tonight. A pair is in the queue once, as
the first kind that finds it, and never when a verdict on it is honoured or waiting."""

import numpy as np

#: Pairs of each kind at most.
QUOTA = 250
#: How far past the copy threshold a pair is still "just past" it, as a multiple of it.
BAND = 1.5
KINDS = ("copies across records", "just past the copy threshold", "one-sided first neighbour", "new tonight")


def _copies_across(run):
    """(a, b, distance) of the first image of each group spanning records with its members of other records."""
    a, b = [], []
    members = np.flatnonzero(run.group >= 0)
    if not len(members):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = members[np.lexsort((members, run.group[members]))]
    groups = run.group[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(order)]):
        rows = order[start:end]
        first = rows[0]
        others = rows[run.ppn[rows] != run.ppn[first]]
        a.extend([first] * len(others))
        b.extend(others.tolist())
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)


def pair_distances(run, a, b):
    """The distance of each pair (rows) where b is in a's list or a in b's, else +inf (a group's pair may be in neither)."""
    found = np.full(len(a), np.inf)
    for x, y in ((a, b), (b, a)):
        hit = run.neighbours[x] == y[:, None]
        at = hit.argmax(axis=1)
        listed = hit.any(axis=1)
        found = np.where(listed, np.minimum(found, run.distances[x, at]), found)
    return found


def review_queue(run, quota=QUOTA):
    """The queue of a :class:`pipeline.browse.ServedRun` (see the module).

    Returns
    -------
    a, b : ndarray of int64
        The pairs' rows, in queue order.
    kind : ndarray of int64
        Index in KINDS of each pair's kind.
    """
    n = len(run)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    first, first_d = run.neighbours[:, 0], run.distances[:, 0].astype(np.float64)
    rows = np.arange(n)
    candidates = []
    a, b = _copies_across(run)
    candidates.append((a, b, pair_distances(run, a, b)))
    if run.copies_threshold is not None:
        beyond = (first_d > run.copies_threshold) & (first_d <= BAND * run.copies_threshold)
        candidates.append((rows[beyond], first[beyond], first_d[beyond]))
    else:
        candidates.append((np.zeros(0, np.int64),) * 2 + (np.zeros(0),))
    one_sided = ~(run.neighbours[first] == rows[:, None]).any(axis=1)
    candidates.append((rows[one_sided], first[one_sided], first_d[one_sided]))
    if run.changed is not None:
        new = run.changed.astype(bool)
        candidates.append((rows[new], first[new], first_d[new]))
    else:
        candidates.append((np.zeros(0, np.int64),) * 2 + (np.zeros(0),))
    judged = _judged_pairs(run)
    seen = set()
    out_a, out_b, out_kind = [], [], []
    for kind, (x, y, d) in enumerate(candidates):
        taken = 0
        for i in np.lexsort((y, x, d)):
            pair = (min(x[i], y[i]), max(x[i], y[i]))
            if pair in seen or pair in judged or x[i] == y[i]:
                continue
            seen.add(pair)
            out_a.append(x[i])
            out_b.append(y[i])
            out_kind.append(kind)
            taken += 1
            if taken >= quota:
                break
    return np.array(out_a, np.int64), np.array(out_b, np.int64), np.array(out_kind, np.int64)


def _judged_pairs(run):
    """The unordered pairs of rows the lists honour a verdict on."""
    verdicts = run.honoured
    if not len(verdicts):
        return set()
    a, b = run.rows_of(verdicts.image_id), run.rows_of(verdicts.similar_image_id)
    kept = (a >= 0) & (b >= 0)
    return {(min(x, y), max(x, y)) for x, y in zip(a[kept].tolist(), b[kept].tolist())}
