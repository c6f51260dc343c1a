"""Thumbnails and previews of the collection's images, made by the night and kept in one SQLite
file that the web app reads, so that no page request ever decodes a master.

An image's views are made from the reduced copy its decoder process already reads for the
model (:func:`pipeline.images.decode_image` with ``views``, :func:`pipeline.images.make_views`), in colour: under ``colour = grey``
a colour JPEG is decoded a second time, in colour, at the same reduced scale. The extraction
hands them to an :class:`Inbox` (one file per batch, written whole, so that shards on several
machines never write one file at once); one task then moves them into the :class:`ViewStore`,
decodes the images that have none (extracted before views were made, or whose views were lost)
and forgets the images that are gone. A view is keyed by its file's key (path and fingerprint),
so a changed file gets new views.
"""

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import uuid

import h5py
import numpy as np

from .errors import ArtifactError, ImageError
from .h5io import atomic_path, create, read_strings, write_strings

logger = logging.getLogger(__name__)

#: The views' kinds, as the store's columns and the web app's URLs name them.
KINDS = ("thumbnail", "preview")
#: Views moved or made per transaction of the store.
BATCH = 256
_VLEN = h5py.vlen_dtype(np.uint8)


class Inbox:
    """Views made by the extraction, waiting to be moved into the store: a folder of small HDF5
    files, each the views of one batch, renamed into place whole.

    Parameters
    ----------
    folder : str
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)

    def put(self, keys, views):
        """Leave the views of one batch: ``keys`` (file keys) and ``views`` (one (thumbnail,
        preview) pair of bytes each)."""
        if not keys:
            return
        with atomic_path(os.path.join(self.folder, f"{uuid.uuid4().hex}.h5")) as tmp:
            with create(tmp) as f:
                write_strings(f, "keys", keys)
                for i, kind in enumerate(KINDS):
                    data = f.create_dataset(kind, (len(keys),), dtype=_VLEN)
                    for row, pair in enumerate(views):
                        data[row] = np.frombuffer(pair[i], dtype=np.uint8)

    def files(self):
        """The batches waiting, oldest first."""
        try:
            names = [n for n in os.listdir(self.folder) if n.endswith(".h5") and not n.startswith(".")]
        except FileNotFoundError:
            return []
        paths = [os.path.join(self.folder, n) for n in names]
        return sorted(paths, key=lambda p: os.stat(p).st_mtime_ns)

    @staticmethod
    def read(path):
        """[(key, thumbnail, preview)] of one batch file; None when it cannot be read (a file
        that a killed write left is never renamed into place, but the disk may damage one)."""
        try:
            with h5py.File(path, "r") as f:
                keys = read_strings(f["keys"])
                columns = [[bytes(v) for v in f[kind][:]] for kind in KINDS]
        except (OSError, KeyError) as exc:
            logger.warning("views file %s cannot be read (%s): its images' views are made anew", path, exc)
            return None
        return list(zip(keys.tolist(), *columns))


@dataclasses.dataclass
class ViewsDone:
    """What bringing the store up to date did."""

    images: int
    """Images of the run, each with views now unless it failed."""
    from_extraction: int
    """Views moved in from the extraction's inbox."""
    decoded: int
    """Images decoded for their views alone."""
    failed: list
    """(key, reason) of the images whose views could not be made."""
    removed: int
    """Views of images gone (or changed) forgotten."""
    bytes_per_image: float
    """Mean size of an image's two views."""
    repaired: str = ""
    """Why the store was made anew, when it could not be read."""


class ViewStore:
    """``views.sqlite``: each file key's thumbnail and preview, each database ID's file key in the
    run that brought the store up to date last, and that run's record (``meta``).

    One writer at a time (the night's task), any number of readers (the web app's threads, each
    with a connection of its own): SQLite's rollback journal lets readers see each transaction
    whole, on a local disk or a network file system that honours locks.

    Parameters
    ----------
    path : str
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._local = threading.local()

    def _connect(self, readonly):
        if readonly:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30)
            connection.executescript(
                "CREATE TABLE IF NOT EXISTS views (key TEXT PRIMARY KEY, thumbnail BLOB NOT NULL, preview BLOB NOT NULL);"
                "CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, key TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
            )
        return connection

    @contextlib.contextmanager
    def writing(self):
        """A connection for writing; one transaction per ``with connection:`` block. A store that
        cannot be read is set aside (``views.sqlite.damaged``) and made anew; the reason is in
        :attr:`repaired`."""
        self.repaired = ""
        try:
            connection = self._connect(readonly=False)
            connection.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.DatabaseError as exc:
            self.repaired = f"{os.path.basename(self.path)} is unreadable ({exc}): its views are made anew"
            logger.warning("%s", self.repaired)
            os.replace(self.path, self.path + ".damaged")
            for suffix in ("-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path + suffix)
            connection = self._connect(readonly=False)
        try:
            yield connection
        finally:
            connection.close()

    def meta(self):
        """The record of the run that brought the store up to date last ({} when none, or unreadable)."""
        try:
            connection = self._connect(readonly=True)
            try:
                return dict(connection.execute("SELECT name, value FROM meta").fetchall())
            finally:
                connection.close()
        except sqlite3.Error:
            return {}

    def view(self, image_id, kind):
        """The JPEG bytes of the view ``kind`` of the image with database ID ``image_id``, or None."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
        query = f"SELECT v.{kind} FROM images i JOIN views v ON v.key = i.key WHERE i.id = ?"
        for attempt in (0, 1):
            connection = getattr(self._local, "connection", None)
            try:
                if connection is None or self._local.identity != _identity(self.path):
                    if connection is not None:
                        connection.close()
                    self._local.identity = _identity(self.path)
                    connection = self._local.connection = self._connect(readonly=True)
                row = connection.execute(query, (str(image_id),)).fetchone()
                return row[0] if row else None
            except (sqlite3.Error, OSError):
                self._local.connection = None
                if attempt:
                    return None
        return None


def _identity(path):
    stat = os.stat(path)
    return stat.st_ino, stat.st_dev


def update_views(store, inbox, ids, keys, paths, pool=None, progress=None):
    """Bring the store up to date with a run's images.

    The inbox's views of the run's images move into the store; the images still without views
    are decoded for them (by ``pool``, a :class:`~pipeline.decoders.DecoderPool` running
    :func:`pipeline.images.decode_views`); views of keys that are no longer the run's are forgotten; and each
    database ID is mapped to its file key.

    Parameters
    ----------
    store : ViewStore
    inbox : Inbox
    ids, keys : ndarray of shape (n,)
        Database IDs and file keys of the run's images.
    paths : sequence of str, length n
        Their files.
    pool : DecoderPool, optional
        Needed only when some image has no views.
    progress : callable(done, total), optional
        Called after each batch decoded.

    Returns
    -------
    ViewsDone
    """
    wanted = dict(zip(np.asarray(keys).tolist(), range(len(keys))))
    moved = 0
    with store.writing() as db:
        for path in inbox.files():
            rows = inbox.read(path)
            if rows:
                rows = [r for r in rows if r[0] in wanted]
                with db:
                    db.executemany("INSERT OR REPLACE INTO views VALUES (?, ?, ?)", rows)
                moved += len(rows)
            os.remove(path)
        have = {k for (k,) in db.execute("SELECT key FROM views")}
        missing = [i for k, i in wanted.items() if k not in have]
        failed, decoded = [], 0
        if missing and pool is None:
            raise ArtifactError(f"{len(missing)} images have no views, and no decoder was given to make them")
        for start in range(0, len(missing), BATCH):
            batch = missing[start : start + BATCH]
            rows = []
            for i, result in zip(batch, pool.imap([paths[i] for i in batch])):
                if isinstance(result, ImageError):
                    failed.append((keys[i], str(result)))
                else:
                    rows.append((keys[i], *result.views))
            with db:
                db.executemany("INSERT OR REPLACE INTO views VALUES (?, ?, ?)", rows)
            decoded += len(rows)
            if progress is not None:
                progress(start + len(batch), len(missing))
        gone = [(k,) for k in have if k not in wanted]
        with db:
            db.executemany("DELETE FROM views WHERE key = ?", gone)
            db.execute("DELETE FROM images")
            db.executemany(
                "INSERT INTO images VALUES (?, ?)", zip(np.asarray(ids).astype(str).tolist(), np.asarray(keys).tolist())
            )
        size = db.execute("SELECT avg(length(thumbnail) + length(preview)) FROM views").fetchone()[0] or 0.0
    if failed:
        logger.warning("%d images have no views: %s", len(failed), "; ".join(f"{k}: {r}" for k, r in failed[:5]))
    return ViewsDone(len(keys), moved, decoded, failed, len(gone), round(float(size), 1), store.repaired)


def record(store, values):
    """Record ``values`` (str to str) in the store's ``meta``, replacing what was there."""
    with store.writing() as db, db:
        db.execute("DELETE FROM meta")
        db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(values.items()))
