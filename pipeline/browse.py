"""The lists a run left, held in memory for the web app: each image's final list, its copy group,
its record and its place on the map, found by database ID, PPN and file name.

Everything is read once from the run's artifacts (:meth:`ServedRun.load`) into arrays sorted for
binary search, so that a lookup costs a few comparisons at any size of collection. A list is
the one similarities.hdf5 holds for the image, unchanged: the verdicts a night honoured are in
it, and the distances are its float32 values. A copy group or map that belongs to another night
(the night is between its stages) is shown for the images it names that are still there.
"""

import dataclasses
import logging
import os

import h5py
import numpy as np
import pandas as pd

from .atlas import load_map
from .codebook import Codebook
from .copies import load_copies
from .errors import ArtifactError
from .h5io import read_attrs, read_ids
from .query import run_counts
from .report import read_json
from .verdicts import Verdicts
from .weighting import Distance, similarity

logger = logging.getLogger(__name__)

#: The files a served run is read from, under the artifacts folder: the lists, and what is shown beside them.
FILES = {
    "similarities": "similarities.hdf5",
    "copies": "copies.h5",
    "map": "map.h5",
    "report": "run_report.json",
    "evaluation": "evaluation.json",
    "selfcheck": "selfcheck.json",
}
#: Results a text search lists at most.
SEARCH_LIMIT = 200


def identity(artifacts):
    """What changes when a night replaces any of the served files (each is renamed into place whole)."""
    found = []
    for name in FILES.values():
        try:
            stat = os.stat(os.path.join(artifacts, name))
            found.append((name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except OSError:
            found.append((name, None))
    return tuple(found)


def _strings(dataset):
    """A UTF-8 string dataset as an object array of str (a tenth of the memory of numpy's fixed width)."""
    if len(dataset) == 0:
        return np.array([], dtype=object)
    return dataset.asstr()[:]


class _Sorted:
    """Values sorted once for binary search: the positions of a value, or of values with a prefix."""

    def __init__(self, values):
        self.order = np.argsort(values, kind="stable")
        self.values = values[self.order]

    def equal(self, value):
        lo, hi = np.searchsorted(self.values, value, "left"), np.searchsorted(self.values, value, "right")
        return self.order[lo:hi]

    def prefix(self, text):
        lo = np.searchsorted(self.values, text, "left")
        hi = np.searchsorted(self.values, text + "\U0010ffff", "left")
        return self.order[lo:hi]


@dataclasses.dataclass(frozen=True)
class Found:
    """A text search's result: the rows found (at most SEARCH_LIMIT) and how many there were."""

    how: str
    """What the text matched: ``id``, ``ppn``, ``filename`` or ``none``."""
    rows: np.ndarray
    total: int


class ServedRun:
    """One run's lists and what is shown beside them (see the module).

    Made by :meth:`load`. Rows are the images' positions in similarities.hdf5.

    Attributes
    ----------
    ids : ndarray of shape (n,)
        Database IDs, int64 or str.
    ppn, filename : ndarray of shape (n,), object (str)
    neighbours : ndarray of shape (n, k), int64
        Each image's final list as rows, nearest first.
    distances : ndarray of shape (n, k), float32
    changed : ndarray of shape (n,), bool, or None
        Lists that differ from the night before's (None: no night before).
    group : ndarray of shape (n,), int64
        Each image's copy group, -1 for none.
    xy : ndarray of shape (n, 2), float32, or None
        Each image's place on the map in [0, 1] (NaN: not placed).
    honoured : Verdicts
        The verdicts the lists honour.
    attrs : dict
        similarities.hdf5's attributes.
    report, evaluation, selfcheck : dict or None
        The run report and the checks, where there are ones.
    """

    def __init__(self, ids, ppn, filename, neighbours, distances, attrs, changed=None, honoured=None):
        self.ids, self.ppn, self.filename = (
            np.asarray(ids),
            np.asarray(ppn, dtype=object),
            np.asarray(filename, dtype=object),
        )
        self.neighbours, self.distances, self.attrs, self.changed = neighbours, distances, attrs, changed
        self.honoured = honoured if honoured is not None else Verdicts.empty(self.ids.dtype)
        n = len(self.ids)
        self.group = np.full(n, -1, dtype=np.int64)
        self.xy = None
        self.report = self.evaluation = self.selfcheck = None
        self.copies_threshold = None  # the copies' distance threshold (none when they are made of verified pairs)
        self.max_distance = 1.0
        self._ids = _Sorted(self.ids)
        self._records = _Sorted(self.ppn)
        self._files = _Sorted(self.filename)
        self._groups = _Sorted(self.group)

    def __len__(self):
        return len(self.ids)

    @property
    def dtype(self):
        """The dtype of the database IDs: int64, or object (str)."""
        return self.ids.dtype

    @property
    def date(self):
        """The date of the night that made the lists."""
        return str(self.attrs.get("run_date", ""))

    @property
    def digest(self):
        return str(self.attrs.get("digest", ""))

    @classmethod
    def load(cls, artifacts):
        """Read the run the artifacts folder holds.

        Raises
        ------
        ArtifactError
            When similarities.hdf5 is missing or cannot be read.
        """
        path = os.path.join(artifacts, FILES["similarities"])
        try:
            attrs = read_attrs(path)
            with h5py.File(path, "r") as f:
                ids = read_ids(f["ids"])
                if ids.dtype.kind != "i":
                    ids = np.asarray(ids, dtype=object)
                listed = read_ids(f["neighbours"])
                distances = f["distances"][:]
                ppn, filename = _strings(f["ppn"]), _strings(f["filename"])
                changed = f["changed"][:] if "changed" in f else None
                honoured = None
                if "verdict_right" in f:
                    honoured = Verdicts(
                        read_ids(f["verdict_image_id"]),
                        read_ids(f["verdict_similar_image_id"]),
                        f["verdict_right"][:].astype(bool),
                        np.array([], dtype=str),
                        np.array([], dtype=str),
                    )
        except (OSError, KeyError) as exc:
            reason = "no such file" if not os.path.exists(path) else str(exc).splitlines()[0]
            raise ArtifactError(f"{path} cannot be read ({reason}); a night must finish first") from None
        order = pd.Index(ids)
        neighbours = order.get_indexer(listed.ravel()).reshape(listed.shape).astype(np.int64)
        if len(neighbours) and neighbours.min() < 0:
            raise ArtifactError(f"{path} lists images it does not hold; run the night again")
        run = cls(ids, ppn, filename, neighbours, distances, attrs, changed, honoured)
        run._read_beside(artifacts)
        return run

    def _read_beside(self, artifacts):
        """What is shown beside the lists: the copy groups, the map, the report and the checks."""

        def path(name):
            return os.path.join(artifacts, FILES[name])

        distance = Distance.recorded(self.attrs)
        if distance.metric != "cosine":
            self.max_distance = _max_distance(artifacts, self.attrs)
        loaded = load_copies(path("copies")) if os.path.exists(path("copies")) else None
        if loaded is not None:
            rows = loaded[0].rows
            at = self.rows_of(rows["image_id"].to_numpy())
            self.group[at[at >= 0]] = rows["group"].to_numpy()[at >= 0]
            try:
                made = read_attrs(path("copies"))
                if made.get("measure", "distance") == "distance":  # not a verification score
                    self.copies_threshold = float(made["threshold"])
            except (OSError, KeyError):
                pass
            self._groups = _Sorted(self.group)
        try:
            map_ids, xy = load_map(path("map"))
            at = self.rows_of(map_ids)
            self.xy = np.full((len(self), 2), np.nan, dtype=np.float32)
            self.xy[at[at >= 0]] = xy[at >= 0]
        except (OSError, KeyError):
            self.xy = None
        self.report = read_json(path("report"))
        self.evaluation = read_json(path("evaluation"))
        self.selfcheck = read_json(path("selfcheck"))

    def rows_of(self, ids):
        """The row of each database ID (int or str, as the run's IDs are), -1 for an ID not in the run."""
        ids = np.asarray(ids)
        if self.ids.dtype.kind == "i":
            if ids.dtype.kind not in "iu":  # text: a whole number as the IDs are written, nothing else
                text = pd.Series(ids, dtype=object).astype(str)
                ok = text.str.fullmatch(r"-?(0|[1-9][0-9]{0,17})").to_numpy(dtype=bool)
                ids = np.where(ok, text.where(ok, "0"), "0").astype(np.int64)
                return np.where(ok, self._find(ids), -1)
            return self._find(ids.astype(np.int64))
        return self._find(np.asarray(ids, dtype=str).astype(object))

    def _find(self, ids):
        values = self._ids.values
        if not len(values):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(values, ids), len(values) - 1)
        return np.where(values[at] == ids, self._ids.order[at], -1).astype(np.int64)

    def row_of(self, text):
        """The row of the image with database ID ``text`` (as typed, in a URL), or None."""
        row = int(self.rows_of(np.array([str(text).strip()], dtype=object))[0])
        return None if row < 0 else row

    def id_of(self, row):
        """The database ID of a row, as JSON takes it (int or str)."""
        value = self.ids[row]
        return value.item() if isinstance(value, np.generic) else value

    def similarity(self, distances):
        """Similarity in percent of distances, as the query command gives it (1 decimal)."""
        return np.round(similarity(distances, self.max_distance), 1)

    def entry(self, row):
        """The image at ``row``: id, ppn, filename."""
        return {"id": self.id_of(row), "ppn": str(self.ppn[row]), "filename": str(self.filename[row])}

    def neighbours_of(self, row):
        """The image's final list, nearest first: dicts of id, ppn, filename, distance (the stored
        float32's value) and similarity (percent), and ``row``."""
        rows, distances = self.neighbours[row], self.distances[row]
        return [
            {**self.entry(r), "distance": float(d), "similarity": float(s), "row": int(r)}
            for r, d, s in zip(rows.tolist(), distances, self.similarity(distances))
        ]

    def listing(self, row):
        """The image's list as the JSON of ``GET /images/{id}.json``."""
        return {
            **self.entry(row),
            "neighbours": [{k: v for k, v in n.items() if k != "row"} for n in self.neighbours_of(row)],
        }

    def record_rows(self, ppn):
        """The rows of the record ``ppn`` (with or without the PPN prefix), by file name."""
        rows = self._records.equal(_strip(ppn))
        return rows[np.argsort(self.filename[rows], kind="stable")]

    def group_rows(self, row):
        """The rows of the image's copy group, the image's included (empty when it is in none)."""
        if self.group[row] < 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(self._groups.equal(self.group[row]))

    def search(self, text, limit=SEARCH_LIMIT):
        """The images a text names: a database ID, a PPN (with or without the prefix), a file path
        ``PPN<ppn>/<file>``, or the beginning of a file name; the first way that finds any wins."""
        text = str(text).strip()
        if not text:
            return Found("none", np.zeros(0, dtype=np.int64), 0)
        row = self.row_of(text)
        if row is not None:
            return Found("id", np.array([row]), 1)
        if "/" in text:
            record, _, name = text.partition("/")
            rows = self.record_rows(record)
            rows = rows[self.filename[rows] == name] if len(rows) else rows
            return Found("filename", rows[:limit], len(rows))
        rows = self.record_rows(text)
        if len(rows):
            return Found("ppn", rows[:limit], len(rows))
        rows = self._files.prefix(text)  # by file name, then in the run's order (by record)
        return Found("filename" if len(rows) else "none", rows[:limit], len(rows))


def _strip(ppn):
    ppn = str(ppn).strip()
    return ppn[3:] if ppn.upper().startswith("PPN") else ppn


def _max_distance(artifacts, attrs):
    """The largest distance of the run's metric (for the similarity in percent), from its codebook
    and histograms; 1 where they cannot be read."""
    try:
        codebook = Codebook.load(os.path.join(artifacts, "codebook.h5"))
        _, data = run_counts(
            os.path.join(artifacts, "histograms.h5"), codebook, np.array([]), attrs, rows=np.zeros(0, np.int64)
        )
        return float(data.max_distance())
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("the largest distance cannot be read (%s): similarities in percent taken against 1", exc)
        return 1.0
