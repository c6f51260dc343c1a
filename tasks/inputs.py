"""The inputs from outside the graph: the collection's folder, the ID mapping (a CSV file or the
CMS database), the labels; each missing one reads as a missing input naming its setting."""

import functools

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
    """A table of the CMS database (or only the database, when ``table`` is None)."""

    def __init__(self, table=None):
        self.table = table

    def exists(self):
        try:
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


def read_mapping():
    """The ID mapping as configured in ``[cms]``, and a description of where it came from."""
    c = config.cms()
    mapping = cms.read_mapping(
        engine(), c.images_table, c.id_column, c.ppn_column, c.filename_column, query=c.ids_query
    )
    return mapping, "[cms] ids_query" if c.ids_query.strip() else f"[cms] images_table={c.images_table!r}"


class ContentFolder(RunInput):
    """The collection: ``[paths] content``."""

    path = luigi.Parameter(description="The collection's folder.")

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return (
            f"[paths] content={self.path!r} does not exist; set it to the folder that holds the PPN<id>/ folders "
            "(or mount the storage it is on)"
        )


class IdMapping(RunInput):
    """The CMS's ID mapping: ``[ids] csv``."""

    path = luigi.Parameter(description="The ID mapping CSV file.")

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return (
            f"[ids] csv={self.path!r} does not exist; export the CMS's images to it (id,ppn,filename) "
            "or read them from the CMS with [ids] source = cms"
        )


class LabelsFile(RunInput):
    """The labels the neighbours are evaluated against: ``[evaluate] labels``."""

    path = luigi.Parameter(description="The labels CSV file (id,label).")

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return f"[evaluate] labels={self.path!r} does not exist; give a CSV file id,label of (some of) the collection's images"


def read_id_mapping():
    """The ID mapping of ``[ids] source`` and the words naming where it came from."""
    if config.ids().source == "cms":
        return read_mapping()
    return collection.read_mapping(config.ids().csv), f"[ids] csv={config.ids().csv!r}"
