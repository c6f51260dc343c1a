"""What the app holds between requests: the served run (swapped whole when a night replaces the
artifacts), the verdicts in force at their source, and the model for queries by upload.

Requests never wait for a night: a watcher thread reads the new run beside the old one and swaps
the reference once it is whole, and each request works on the snapshot it started with.
"""

import dataclasses
import datetime
import logging
import threading
import time

import numpy as np

from pipeline import browse
from pipeline.errors import PipelineError
from pipeline.review import review_queue
from pipeline.verdicts import verdicts_in_force

logger = logging.getLogger(__name__)


def pair_of(a, b):
    """The unordered pair of two database IDs, as text: the key every verdict is kept under."""
    a, b = str(a), str(b)
    return (a, b) if a < b else (b, a)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A served run and what is worked out from it once."""

    run: browse.ServedRun
    honoured: dict
    """Pair (IDs as text) -> "right" or "wrong": the verdicts the lists honour."""
    honoured_by_image: dict
    """ID as text -> the IDs (as text) it has an honoured verdict with."""
    queue: tuple
    """(a rows, b rows, kinds) of the review queue (pipeline.review)."""
    loaded: str
    """When the app read it, ISO 8601."""

    @classmethod
    def of(cls, run):
        honoured = {
            pair_of(a, b): "right" if right else "wrong"
            for a, b, right in zip(
                run.honoured.image_id.tolist(), run.honoured.similar_image_id.tolist(), run.honoured.right
            )
        }
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return cls(run, honoured, _by_image(honoured), review_queue(run), now)


def _by_image(pairs):
    """ID -> the IDs it is paired with, of an iterable of pairs."""
    found = {}
    for a, b in pairs:
        found.setdefault(a, set()).add(b)
        found.setdefault(b, set()).add(a)
    return found


class Ledger:
    """The verdict in force on each pair at its source (the CMS table or the CSV file), read every
    few seconds and at once after the app's own writes, for the verdicts not yet honoured.

    Parameters
    ----------
    read : callable returning a DataFrame of verdict rows (pipeline.verdicts.read_table's), or
        None where the site keeps no verdicts
    """

    def __init__(self, read):
        self._read = read
        self._lock = threading.Lock()
        self._in_force, self._by_image = {}, {}
        self._written = []  # (when, pair, value) of the app's own writes, until a read has them
        self.problem = None
        self.where = None
        self.read_at = None

    def refresh(self):
        """Read the source again; a source that cannot be read keeps the last reading, with ``problem`` set."""
        started = time.monotonic()
        try:
            rows = self._read()
        except PipelineError as exc:
            self.problem = str(exc)
            return
        in_force = {}
        if rows is not None:
            table = verdicts_in_force(rows)
            in_force = {
                (a, b): ("right" if right else "wrong", t.isoformat(), author)
                for a, b, right, t, author in zip(
                    table["a"], table["b"], table["right"], table["time"], table["author"]
                )
            }
        with self._lock:
            self._written = [w for w in self._written if w[0] >= started]
            for _, pair, value in self._written:
                if value is None:
                    in_force.pop(pair, None)
                else:
                    in_force[pair] = value
            self._in_force, self._by_image = in_force, _by_image(in_force)
        self.problem, self.read_at = None, time.time()

    def wrote(self, a, b, verdict, author):
        """Record the app's own write (``withdraw`` removes the pair's verdict) until the next reading has it."""
        pair = pair_of(a, b)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        value = None if verdict == "withdraw" else (verdict, now, author or "")
        with self._lock:
            self._written.append((time.monotonic(), pair, value))
            for x, y in (pair, pair[::-1]):
                if value is None:
                    self._by_image.get(x, set()).discard(y)
                else:
                    self._by_image.setdefault(x, set()).add(y)
            if value is None:
                self._in_force.pop(pair, None)
            else:
                self._in_force[pair] = value

    def verdict(self, a, b):
        """(verdict, time, author) in force at the source on the pair, or None."""
        return self._in_force.get(pair_of(a, b))

    def partners(self, image_id):
        """The IDs (as text) the image has a verdict with at the source."""
        return set(self._by_image.get(str(image_id), ()))


class Served:
    """The served snapshot, and the thread that watches the artifacts folder for a new night.

    Parameters
    ----------
    artifacts : str
    reload_seconds : float
    ledger : Ledger
    """

    def __init__(self, artifacts, reload_seconds, ledger):
        self.artifacts = artifacts
        self.reload_seconds = reload_seconds
        self.ledger = ledger
        self.snapshot = None
        self.problem = "no run has been read yet"
        self._identity = None
        self._stop = threading.Event()
        self._thread = None
        self._reading = threading.Lock()

    def refresh(self):
        """Read the run again if a night replaced any of its files; True when a new one is served."""
        with self._reading:
            identity = browse.identity(self.artifacts)
            if identity == self._identity and self.snapshot is not None:
                return False
            try:
                snapshot = Snapshot.of(browse.ServedRun.load(self.artifacts))
            except (PipelineError, OSError, KeyError, ValueError) as exc:
                self.problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if self.snapshot is None:
                    logger.warning("no run to serve: %s", self.problem)
                else:
                    logger.warning(
                        "the new run cannot be read (%s): the run of %s is served", self.problem, self.snapshot.run.date
                    )
                return False
            if browse.identity(self.artifacts) != identity:  # replaced while it was read: read it again next time
                return False
            previous = self.snapshot
            self.snapshot, self._identity, self.problem = snapshot, identity, None
            logger.info(
                "serving the run of %s: %d images (similarities.hdf5 %s)%s",
                snapshot.run.date,
                len(snapshot.run),
                snapshot.run.digest,
                f", after the run of {previous.run.date}" if previous else "",
            )
            return True

    def start(self):
        """Read the run now, and watch for new ones every ``reload_seconds`` in a daemon thread."""
        self.refresh()
        self.ledger.refresh()
        self._thread = threading.Thread(target=self._watch, name="served-run", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self):
        while not self._stop.wait(self.reload_seconds):
            try:
                self.refresh()
                self.ledger.refresh()
            except Exception:  # the watcher must outlive any one bad reading
                logger.exception("reading the artifacts folder failed; trying again in %g s", self.reload_seconds)


class Queries:
    """The query by upload, one at a time, with the model built at the first and kept.

    Parameters
    ----------
    make : callable(previous) returning an object with ``query(files, k)`` and ``close()``, for the
        run served now (``previous``: the one made for an earlier run, whose model it may keep)
    """

    #: Uploads at once, the one queried and those waiting for it: the others are refused at once,
    #: so that uploads never take every thread that serves the pages.
    ADMITTED = 2

    def __init__(self, make):
        self._make = make
        self._querier = None
        self._digest = None
        self._lock = threading.Lock()
        self._admitted = threading.BoundedSemaphore(self.ADMITTED)

    def query(self, path, k, digest, wait=60.0):
        """The neighbours of the image file at ``path`` (one result dict, as the query command's).

        Raises
        ------
        TimeoutError
            When ADMITTED uploads are in already, or the one queried keeps the model busy for ``wait`` seconds.
        """
        busy = TimeoutError("other queries by upload keep the model busy; try again in a minute")
        if not self._admitted.acquire(blocking=False):
            raise busy
        try:
            if not self._lock.acquire(timeout=wait):
                raise busy
            try:
                if self._querier is None or self._digest != digest:
                    self._querier = self._make(self._querier)
                    self._digest = digest
                return self._querier.query([path], k=k)[0]
            finally:
                self._lock.release()
        finally:
            self._admitted.release()

    def close(self):
        with self._lock:
            if self._querier is not None:
                self._querier.close()
                self._querier = None


def in_queue_order(snapshot, ledger):
    """The review queue's pairs still without a verdict at the source: (a rows, b rows, kinds)."""
    a, b, kinds = snapshot.queue
    if not len(a):
        return a, b, kinds
    run = snapshot.run
    keep = np.array([ledger.verdict(run.id_of(x), run.id_of(y)) is None for x, y in zip(a.tolist(), b.tolist())], bool)
    return a[keep], b[keep], kinds[keep]
