"""The verdicts checked row by row, the pairs they judge (:class:`Verdicts`), their positions in a
run (:class:`Judgements`), their file in the artifacts, and the lists scored on them; the rule
they keep is stated in :mod:`pipeline.verdicts`."""

import collections
import dataclasses
import logging
import typing

import h5py
import numpy as np
import pandas as pd

from ..h5io import create, read_ids, read_strings, write_ids, write_strings

logger = logging.getLogger(__name__)

VERDICTS = ("wrong", "right")


class BadRow(typing.NamedTuple):
    """A verdict row that cannot be honoured."""

    row: str
    """Where it is and what it says."""
    kind: str
    """unknown ID, image has gone, self-pair, unknown verdict, bad verdict_time or too many wrong."""
    reason: str
    """One line, with the values."""


@dataclasses.dataclass
class Verdicts:
    """The verdicts a night honours, one per pair (the pair's latest), by database ID."""

    image_id: np.ndarray
    similar_image_id: np.ndarray
    right: np.ndarray
    """bool: judged ``right``, else ``wrong``."""
    time: np.ndarray
    """str: ISO 8601 in UTC."""
    author: np.ndarray
    """str, empty when none was given."""

    def __len__(self):
        return len(self.right)

    @classmethod
    def empty(cls, ids_dtype=np.int64):
        return cls(*(np.array([], dtype=t) for t in (ids_dtype, ids_dtype, bool, str, str)))

    def positions(self, ids):
        """(a, b) positions of each pair among the run's ``ids``; -1 where an image is not there."""
        index = pd.Index(np.asarray(ids).astype(str))
        return (
            index.get_indexer(self.image_id.astype(str)).astype(np.int64),
            index.get_indexer(self.similar_image_id.astype(str)).astype(np.int64),
        )

    def judgements(self, ids):
        """The :class:`Judgements` of these verdicts over the positions of ``ids`` (pairs of an
        image not among them are left out)."""
        a, b = self.positions(ids)
        kept = (a >= 0) & (b >= 0)
        return Judgements(len(ids), a[kept], b[kept], self.right[kept])


def check_verdicts(rows, ids, known=(), k=5):
    """The verdicts to honour from the rows read, and the rows that cannot be.

    Parameters
    ----------
    rows : DataFrame
        :func:`read_table` or :func:`read_csv`.
    ids : ndarray of shape (n,)
        The database IDs of the images with lists in this run.
    known : iterable of str
        IDs that were images once (the ID mapping's rows without a file, the IDs of verdicts
        honoured on earlier nights): a verdict naming one of them has gone, not an unknown ID.
    k : int
        Neighbours per list: an image keeps at least k images not judged wrong.

    Returns
    -------
    verdicts : Verdicts
    bad : list of BadRow
        Each row left out: its text, the kind of reason and the reason.
    superseded : int
        Rows replaced by a later verdict on the same pair.
    """
    ids = np.asarray(ids)
    by_id = {str(i): i for i in ids.tolist()}
    known = {str(i) for i in known}
    bad = []
    frame = rows.copy()
    for column in ("image_id", "similar_image_id", "verdict", "author"):
        frame[column] = [_text(v) for v in frame[column]]
    times = pd.to_datetime(frame["verdict_time"], utc=True, errors="coerce", format="mixed")
    good = []
    for i, row in enumerate(frame.itertuples(index=False)):
        text = f"{row.where}: {row.image_id},{row.similar_image_id},{row.verdict},{rows['verdict_time'].iloc[i]}"
        kind = reason = None
        for image in (row.image_id, row.similar_image_id):
            if image not in by_id:
                kind, reason = (
                    ("image has gone", f"image {image or '(empty)'} has gone from the collection")
                    if image in known
                    else ("unknown ID", f"unknown ID {image or '(empty)'}: not an image of the collection")
                )
                break
        if kind is None and row.image_id == row.similar_image_id:
            kind, reason = "self-pair", f"a self-pair: image {row.image_id} with itself"
        if kind is None and row.verdict.lower() not in VERDICTS:
            kind, reason = "unknown verdict", f"unknown verdict {row.verdict!r}: it must be wrong or right"
        if kind is None and pd.isna(times.iloc[i]):
            kind = "bad verdict_time"
            reason = f"verdict_time {rows['verdict_time'].iloc[i]!r} is not a date and time"
        if kind:
            bad.append(BadRow(text, kind, reason))
        else:
            good.append(i)
    frame, times = frame.iloc[good], times.iloc[good]
    first, second = frame["image_id"].to_numpy(dtype=str), frame["similar_image_id"].to_numpy(dtype=str)
    swap = first > second  # the unordered pair, by ID text
    table = pd.DataFrame(
        {
            "a": np.where(swap, second, first),
            "b": np.where(swap, first, second),
            "time": times.to_numpy(),
            "right": np.char.lower(frame["verdict"].to_numpy(dtype=str)) == "right",
            "author": frame["author"].to_numpy(dtype=str),
            "where": frame["where"].to_numpy(dtype=str),
        }
    )
    latest = latest_verdicts(table)
    superseded = len(table) - len(latest)
    latest = _keep_lists_full(latest, len(ids), k, bad)
    latest = latest.sort_values(["time", "a", "b"])
    return (
        Verdicts(
            image_id=np.array([by_id[a] for a in latest["a"]], dtype=ids.dtype),
            similar_image_id=np.array([by_id[b] for b in latest["b"]], dtype=ids.dtype),
            right=latest["right"].to_numpy(dtype=bool),
            time=np.array([t.isoformat() for t in latest["time"]], dtype=str),
            author=latest["author"].to_numpy(dtype=str),
        ),
        bad,
        superseded,
    )


def latest_verdicts(table):
    """The pair's latest verdict of each pair of a table with columns a and b (the unordered pair's
    IDs as text, a < b), time, right, author and where; at one time wrong is the later, so that
    a tie never shows a pair judged wrong."""
    table = table.sort_values(["a", "b", "time", "right", "author"], ascending=[True, True, True, False, True])
    return table.drop_duplicates(["a", "b"], keep="last")


def verdicts_in_force(rows):
    """The verdict in force on each pair the rows judge, by the rule of :mod:`pipeline.verdicts`, the
    rows that cannot be read left out (the night lists them): a DataFrame of a, b (IDs as text,
    a < b), right, time and author."""
    frame = rows.copy()
    for column in ("image_id", "similar_image_id", "verdict", "author"):
        frame[column] = [_text(v) for v in frame[column]]
    frame["time"] = pd.to_datetime(frame["verdict_time"], utc=True, errors="coerce", format="mixed")
    frame["verdict"] = [v.lower() for v in frame["verdict"]]
    frame = frame[
        frame["verdict"].isin(VERDICTS)
        & frame["time"].notna()
        & (frame["image_id"] != frame["similar_image_id"])
        & (frame["image_id"] != "")
        & (frame["similar_image_id"] != "")
    ]
    first, second = frame["image_id"].to_numpy(dtype=str), frame["similar_image_id"].to_numpy(dtype=str)
    swap = first > second
    table = pd.DataFrame(
        {
            "a": np.where(swap, second, first),
            "b": np.where(swap, first, second),
            "time": frame["time"].to_numpy(),
            "right": frame["verdict"].to_numpy(dtype=str) == "right",
            "author": frame["author"].to_numpy(dtype=str),
            "where": frame["where"].to_numpy(dtype=str),
        }
    )
    return latest_verdicts(table)[["a", "b", "right", "time", "author"]].reset_index(drop=True)


def _text(value):
    """A cell as text: empty for NULL, a whole number written as one (1011.0 from a float column is 1011)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _keep_lists_full(latest, n, k, bad):
    """Leave out the latest wrong verdicts of an image with so many that fewer than k images
    not judged wrong remain for its list (only in a collection of few more than k images)."""
    limit = n - 1 - k
    wrong = latest[~latest["right"]]
    counts = pd.concat([wrong["a"], wrong["b"]]).value_counts()
    dropped = set()
    for image in counts[counts > limit].index:
        mine = wrong[((wrong["a"] == image) | (wrong["b"] == image)) & ~wrong.index.isin(dropped)]
        for index, row in mine.sort_values("time", ascending=False).iloc[: max(len(mine) - limit, 0)].iterrows():
            dropped.add(index)
            bad.append(
                BadRow(
                    f"{row['where']}: {row['a']},{row['b']},wrong,{row['time'].isoformat()}",
                    "too many wrong",
                    f"image {image} has more pairs judged wrong than its list of {k} can leave out among {n} images",
                )
            )
    return latest.drop(index=list(dropped))


class Judgements:
    """Verdicts over the positions of a run's images: for each judged image, the images judged
    wrong and right with it (both directions).

    Parameters
    ----------
    n : int
        Images of the run.
    a, b : ndarray of int
        The pairs' positions.
    right : ndarray of bool

    Attributes
    ----------
    rows : ndarray of int64
        The judged images' positions, increasing.
    """

    def __init__(self, n, a, b, right):
        a, b, right = (np.asarray(x) for x in (a, b, right))
        self.n = n
        first = np.concatenate([a, b]).astype(np.int64)
        other = np.concatenate([b, a]).astype(np.int64)
        value = np.concatenate([right, right]).astype(bool)
        order = np.lexsort((other, first))
        self._first, self._other, self._right = first[order], other[order], value[order]
        self.rows = np.unique(self._first)
        self._ptr = np.searchsorted(self._first, np.concatenate([self.rows, [n]])) if n else np.zeros(1, np.int64)

    def __len__(self):
        return len(self.rows)

    def partners(self, row):
        """(wrong, right): the positions judged wrong and right with the judged image at ``row``."""
        at = np.searchsorted(self.rows, row)
        if at >= len(self.rows) or self.rows[at] != row:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        part = slice(self._ptr[at], self._ptr[at + 1])
        other, right = self._other[part], self._right[part]
        return other[~right], other[right]

    def codes(self):
        """Each directed verdict as one integer ((a * n + b) * 2 + right): what :func:`changed_images` compares."""
        return (self._first * self.n + self._other) * 2 + self._right

    def verdict(self, a, b):
        """'right', 'wrong' or None for the pair of positions (a, b)."""
        wrong, right = self.partners(a)
        return "right" if b in right else "wrong" if b in wrong else None


def changed_images(now, before):
    """Images whose verdicts differ between two :class:`Judgements` over the same positions: ndarray (n,), bool."""
    changed = np.zeros(now.n, dtype=bool)
    differ = np.setxor1d(now.codes(), before.codes())
    changed[differ // 2 // now.n] = True
    return changed


@dataclasses.dataclass
class NightVerdicts:
    """The verdicts a night honours (:func:`night_verdicts`)."""

    honoured: Verdicts
    bad: list
    superseded: int
    rows: int
    known: set
    """The IDs known to have been images, kept so that they stay "gone"."""

    def summary(self):
        """What verdicts.h5 records of them."""
        right = int(self.honoured.right.sum())
        return {
            "rows": self.rows,
            "honoured": len(self.honoured),
            "wrong": len(self.honoured) - right,
            "right": right,
            "superseded": self.superseded,
            "bad": len(self.bad),
        }

    def found(self):
        """What was read, as one JSON-serialisable value: the pairs honoured and the rows left out."""
        h = self.honoured
        columns = (h.image_id, h.similar_image_id, h.right, h.time, h.author)
        return [*(c.tolist() for c in columns), [list(b) for b in self.bad]]


def night_verdicts(rows, ids, known_before, k, where="the verdicts"):
    """The verdict ``rows`` checked against a night's images ``ids`` (:func:`check_verdicts`).

    Parameters
    ----------
    rows : DataFrame
        The rows read (:func:`~pipeline.verdicts.read_table`, :func:`~pipeline.verdicts.read_csv`).
    ids : ndarray
        The database IDs of the night's images with a list.
    known_before : set of str
        The IDs known to have been images: the previous night's, those of mapping rows without a
        file and of images without a list tonight; a row naming one is "gone", not "unknown".
    k : int
    where : str
        How the log names where the rows were read.
    """
    honoured, bad, superseded = check_verdicts(rows, ids, known_before, k)
    named = {str(i) for i in (*honoured.image_id.tolist(), *honoured.similar_image_id.tolist())}
    mentioned = {str(v).strip() for column in ("image_id", "similar_image_id") for v in rows[column]}
    night = NightVerdicts(honoured, bad, superseded, len(rows), named | (known_before & mentioned))
    s = night.summary()
    logger.info(
        "verdicts from %s: %d rows, %d pairs honoured (%d wrong, %d right), %d rows replaced by a later verdict "
        "on their pair, %d left out",
        where,
        s["rows"],
        s["honoured"],
        s["wrong"],
        s["right"],
        superseded,
        len(bad),
    )
    if bad:
        listed = "; ".join(f"{b.row}: {b.reason}" for b in bad[:20])
        logger.warning("%d verdict rows cannot be honoured: %s%s", len(bad), listed, " ..." if len(bad) > 20 else "")
    return night


def save_verdicts(path, verdicts, bad, known, attrs):
    """Write the night's verdicts, the rows left out and the IDs known to have been images."""
    with create(path) as f:
        f.attrs.update(attrs)
        write_ids(f, "image_id", verdicts.image_id)
        write_ids(f, "similar_image_id", verdicts.similar_image_id)
        f.create_dataset("right", data=verdicts.right.astype(bool))
        write_strings(f, "time", verdicts.time)
        write_strings(f, "author", verdicts.author)
        write_strings(f, "bad_row", [b.row for b in bad])
        write_strings(f, "bad_kind", [b.kind for b in bad])
        write_strings(f, "bad_reason", [b.reason for b in bad])
        write_strings(f, "known", sorted(known))


def load_verdicts(path):
    """(verdicts, bad, known) as :func:`save_verdicts` wrote them."""
    with h5py.File(path, "r") as f:
        verdicts = Verdicts(
            image_id=read_ids(f["image_id"]),
            similar_image_id=read_ids(f["similar_image_id"]),
            right=f["right"][:].astype(bool),
            time=read_strings(f["time"]),
            author=read_strings(f["author"]),
        )
        bad = [
            BadRow(*b)
            for b in zip(read_strings(f["bad_row"]), read_strings(f["bad_kind"]), read_strings(f["bad_reason"]))
        ]
        return verdicts, bad, set(read_strings(f["known"]))


def bad_reasons(bad):
    """How many rows were left out for each kind of reason."""
    return dict(collections.Counter(b.kind for b in bad))


def verdict_scores(ids, lists, verdicts):
    """How the raw lists fare against the verdicts, overall and per day of judging (the UTC date of
    ``verdict_time``).

    Parameters
    ----------
    ids : ndarray of shape (n,)
        The run's database IDs.
    lists : ndarray of shape (n, k)
        Each image's raw list (positions): its k nearest, before any verdict is applied.
    verdicts : Verdicts

    Returns
    -------
    dict with ``pairs``, ``right``, ``wrong``; ``right_found``: the share of the directions of the
    pairs judged right (a to b, b to a) whose raw list holds the other image; ``judged_in_lists``:
    the raw lists' entries whose pair has a verdict, and ``judged_right``: the share of them judged
    right (None where nothing is counted); and ``per_day``: the same for each day.
    """
    a, b = verdicts.positions(ids)
    kept = (a >= 0) & (b >= 0)
    a, b, right = a[kept], b[kept], verdicts.right[kept]
    day = np.array([t[:10] for t in verdicts.time[kept]], dtype=str)
    lists = np.asarray(lists)
    # each pair's entries in the two raw lists: 0, 1 or 2
    found = (lists[a] == b[:, None]).any(axis=1).astype(np.int64) + (lists[b] == a[:, None]).any(axis=1)

    def summary(chosen):
        n_right, n_pairs, judged = int(right[chosen].sum()), int(chosen.sum()), int(found[chosen].sum())
        return {
            "pairs": n_pairs,
            "right": n_right,
            "wrong": n_pairs - n_right,
            "right_found": round(float(found[chosen & right].sum()) / (2 * n_right), 6) if n_right else None,
            "judged_in_lists": judged,
            "judged_right": round(float(found[chosen & right].sum()) / judged, 6) if judged else None,
        }

    result = summary(np.ones(len(a), dtype=bool))
    result["per_day"] = {d: summary(day == d) for d in sorted(set(day.tolist()))}
    return result
