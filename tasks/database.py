"""The CMS database as a Luigi input: the ID mapping read from it."""

import functools

import luigi

from pipeline import cms
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
