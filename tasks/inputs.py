"""The inputs from outside the graph: the collection's folder, the ID mapping (a CSV file or the
CMS database), the labels; each missing one reads as a missing input naming its setting."""

import functools
import logging
import os

import luigi

from pipeline import cms, collection, store
from pipeline.errors import ConfigError
from pipeline.h5io import read_attrs, read_problem
from pipeline.lastrun import keep_previous

from . import config
from .base import CheckSettings, RunGuard, RunInput, RunTask, artifacts_writable

logger = logging.getLogger(__name__)


def engine():
    """The engine of ``[cms] url``, one per URL setting for the process (its connection pool)."""
    return _engine(config.cms().url)


@functools.lru_cache(maxsize=8)
def _engine(setting):
    return cms.connect(cms.resolve_url(setting))


class CmsTable(luigi.Target):
    """A table of the CMS database (or only the database, when ``table`` is None; with ``new_file``,
    an SQLite database may be a file still to be made, as the first load makes it)."""

    def __init__(self, table=None, new_file=False):
        self.table, self.new_file = table, new_file

    def exists(self):
        try:
            url = engine().url
            if self.new_file and url.get_backend_name() == "sqlite" and url.database:
                return os.path.isdir(os.path.dirname(os.path.abspath(url.database)))
            return cms.reachable(engine(), self.table)
        except ConfigError:  # reported by CheckSettings
            return False


class CmsImages(RunInput):
    """The CMS's ID mapping: ``[cms] images_table`` (or ``ids_query``) in the database at ``[cms] url``."""

    sections = ("cms",)

    def output(self):
        return CmsTable(None if config.cms().ids_query.strip() else config.cms().images_table)

    def missing_message(self):
        what = (
            ""
            if config.cms().ids_query.strip()
            else f" or has no table [cms] images_table={config.cms().images_table!r}"
        )
        return (
            f"the CMS database at [cms] url={cms.shown(cms.resolve_url(config.cms().url))} does not answer{what}; "
            "check that the server runs, the URL, and the table"
        )


class CmsDatabase(RunInput):
    """The CMS database at ``[cms] url``, where the lists are loaded and the verdicts read
    (``[verdicts] source``); one that does not answer stops the stages that need it, the work
    before them kept."""

    sections = ("cms",)

    def output(self):
        return CmsTable(None, new_file=True)

    def missing_message(self):
        return (
            f"the CMS database at [cms] url={cms.shown(cms.resolve_url(config.cms().url))} does not answer; check "
            "that the server runs, then run again (what the run made so far is kept, and the CMS is as it was)"
        )


class CollectionOnDisk(RunGuard):
    """The previous run's images still on disk: when more than ``[collection] max_removed`` of them
    are gone, the night stops here, before any task writes, as for a missing input (exit code 20)."""

    sections = ("collection",)

    def check(self):
        return removal_problem(self.date)


#: Where the previous run's images are listed: its inventory, else (damaged) its features index.
PREVIOUS = ("inventory.h5", "features.h5")


def removal_problem(date):
    """One line naming the images gone and the folders they were in, when more than
    ``[collection] max_removed`` of the previous run's images are gone from disk and
    ``[collection] allow_removals`` is not given; None otherwise, or when there is no previous run
    to compare with."""
    try:
        c, content = config.collection(), config.paths().content
    except ConfigError:  # CheckSettings names the setting
        return None
    if c.allow_removals or c.max_removed >= 1 or not os.path.isdir(content):
        return None  # allowed, or ContentFolder names the missing folder
    previous = previous_images([os.path.join(config.paths().artifacts, name) for name in PREVIOUS], date)
    return None if previous is None else collection.removal_from_disk(previous, content, c.max_removed)


def previous_images(paths, date):
    """The relative paths of the previous run's images, from the first of ``paths`` (its
    inventory, then its features index: the images with descriptors and those rejected) that
    can be read; None when none can, or when today's inventory is taken already."""
    unreadable = []
    for path in paths:
        try:
            if read_attrs(path).get("run_date") == date.isoformat():
                return None  # today's: the comparison was made before it was taken
            if os.path.basename(path) == "inventory.h5":
                return [f.relpath for f in collection.load_inventory(path).files]
            index = store.load_index(path)
        except (OSError, KeyError) as exc:  # missing or damaged (made again, with a warning): the next one
            if os.path.exists(path):
                unreadable.append(f"{path} ({read_problem(exc)})")
            continue
        if unreadable:
            logger.warning("the removal guard reads the previous run's images from %s: %s", path, "; ".join(unreadable))
        return [collection.relpath_of(key) for key in index.keys] + [relpath for relpath, _ in index.rejected]
    if unreadable:
        logger.warning("the removal guard has no record of the previous run's images: %s", "; ".join(unreadable))
    return None


def read_mapping():
    """The ID mapping as configured in ``[cms]``, and a description of where it came from."""
    c = config.cms()
    mapping = cms.read_mapping(
        engine(), c.images_table, c.id_column, c.ppn_column, c.filename_column, c.ids_query, c.record_column
    )
    return mapping, "[cms] ids_query" if c.ids_query.strip() else f"[cms] images_table={c.images_table!r}"


class InputPath(RunInput):
    """A file or folder from outside the graph, named by a setting: missing, it says which and the fix."""

    path = luigi.Parameter(description="The file or folder.")
    setting = None
    """The setting that names it, e.g. ``[paths] content``."""
    fix = None
    """What to do when it is missing."""

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return f"{self.setting}={self.path!r} does not exist; {self.fix}"


class ContentFolder(InputPath):
    """The collection: ``[paths] content``."""

    setting = "[paths] content"
    fix = "set it to the folder that holds the PPN<id>/ folders (or mount the storage it is on)"


class IdMapping(InputPath):
    """The CMS's ID mapping as a CSV file: ``[ids] csv``."""

    setting = "[ids] csv"
    sections = ("ids",)
    fix = "export the CMS's images to it (id,ppn,filename) or read them from the CMS with [ids] source = cms"


class LabelsFile(InputPath):
    """The labels the neighbours are evaluated against: ``[evaluate] labels``."""

    setting = "[evaluate] labels"
    sections = ("evaluate",)
    fix = "give a CSV file id,label of (some of) the collection's images"


def read_id_mapping():
    """The ID mapping of ``[ids] source`` and the words naming where it came from."""
    if config.ids().source == "cms":
        return read_mapping()
    return collection.read_mapping(config.ids().csv), f"[ids] csv={config.ids().csv!r}"


class LastRun(RunTask):
    """The results the previous run left, as this run's input: linked under
    ``<artifacts>/runs/<date>/previous/`` before the run writes any (:func:`pipeline.lastrun.keep_previous`),
    for the stages that carry the previous night forward (the removed images, the histograms
    and lists of unchanged images, the verdicts' known images, the copy groups' numbers)."""

    #: The files of a run that the next one reads.
    FILES = ("inventory.h5", "features.h5", "histograms.h5", "verdicts.h5", "similarities.hdf5", "copies.h5")

    def requires(self):
        return {"settings": CheckSettings(date=self.date), "on_disk": CollectionOnDisk(date=self.date)}

    def output(self):
        return luigi.LocalTarget(os.path.join(config.paths().artifacts, "runs", self.date.isoformat(), "previous"))

    def run(self):
        with artifacts_writable():
            keep_previous(config.paths().artifacts, self.output().path, self.FILES, self.date.isoformat())


def previous(task, filename):
    """The path of ``filename`` as the previous run left it, for ``task``, which requires :class:`LastRun` as ``previous``."""
    return os.path.join(task.input()["previous"].path, filename)
