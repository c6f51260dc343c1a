"""The inputs from outside the graph: the collection's folder, the ID mapping (a CSV file or the
CMS database), the labels; each missing one reads as a missing input naming its setting."""

import functools
import os

import luigi

from pipeline import cms, collection
from pipeline.errors import ConfigError

from . import config
from .base import RunInput


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
    """The CMS database at ``[cms] url``, where the verdicts are read (``[verdicts] source``)."""

    def output(self):
        return CmsTable(None, new_file=True)

    def missing_message(self):
        return (
            f"the CMS database at [cms] url={cms.shown(cms.resolve_url(config.cms().url))} does not answer, and the "
            f"verdicts are kept there ([verdicts] table={config.verdicts().table!r}); check that the server runs"
        )


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
    fix = "export the CMS's images to it (id,ppn,filename) or read them from the CMS with [ids] source = cms"


class LabelsFile(InputPath):
    """The labels the neighbours are evaluated against: ``[evaluate] labels``."""

    setting = "[evaluate] labels"
    fix = "give a CSV file id,label of (some of) the collection's images"


def read_id_mapping():
    """The ID mapping of ``[ids] source`` and the words naming where it came from."""
    if config.ids().source == "cms":
        return read_mapping()
    return collection.read_mapping(config.ids().csv), f"[ids] csv={config.ids().csv!r}"
