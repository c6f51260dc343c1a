"""The CMS loads, each in one transaction: this run's similarities into ``[cms] table`` (or the siblings
column), and its groups of copies into ``[cms] copies_table``."""

import h5py

from pipeline import cms, copies
from pipeline.h5io import read_attrs, read_ids
from pipeline.output import read_similarities

from . import config, inputs
from .base import RunTask
from .copies import Copies, copies_wanted
from .neighbours import Similarities


class LoadSimilarities(RunTask):
    """``luigi --module tasks LoadSimilarities --local-scheduler``: this run's similarities into ``[cms] table``.

    One transaction brings the table to this run's rows and writes the marker row: only the
    rows of images whose list changed since the earlier run (and those of removed images) when
    the table holds the earlier run's load and at most half the images changed, else every row
    (:func:`pipeline.cms.plan_load`). The load is complete when the last marker row for the
    table names this run's similarities and the table still holds them
    (:func:`pipeline.cms.holds_load`): a rerun of a loaded run does nothing, and a table dropped
    or emptied outside the pipeline is loaded again, whole, by the next run.
    """

    sections = ("cms",)

    def requires(self):
        # the database first: a server that does not answer is a missing input (exit code 20), the lists kept
        return {"made": Similarities(**self.run_args()), "cms": inputs.CmsDatabase(date=self.date)}

    def run_id(self):
        """The identity of the similarities to load: the digest of similarities.hdf5."""
        return read_attrs(self.input()["made"].path)["digest"]

    def complete(self):
        if not (self.requires()["made"].complete() and self.requires()["cms"].complete()):
            return False
        with h5py.File(self.input()["made"].path, "r") as f:
            ids = read_ids(f["ids"])
            written = ids[f["changed"][:]] if "changed" in f else ids
        return config.destination().holds(inputs.engine(), self.run_id(), ids, written)

    def run(self):
        result = read_similarities(self.input()["made"].path)
        cms.load_lists(inputs.engine(), config.destination(), result, self.run_id(), self.date.isoformat())


class LoadCopies(RunTask):
    """``luigi --module tasks LoadCopies --local-scheduler``: this run's groups of copies into
    ``[cms] copies_table``, the table's rows replaced in one transaction with its marker row.

    Complete when the last marker row for the table names this run's copies.h5 and the table
    holds its rows."""

    sections = ("cms", "copies")

    def requires(self):
        return {"made": Copies(**self.run_args()), "cms": inputs.CmsDatabase(date=self.date)}

    def run_id(self):
        """The identity of the copies to load: the digest of copies.h5."""
        return read_attrs(self.input()["made"].path)["digest"]

    def complete(self):
        if not (self.requires()["made"].complete() and self.requires()["cms"].complete()):
            return False
        images = int(read_attrs(self.input()["made"].path)["images"])
        return cms.holds_copies(
            inputs.engine(), self.run_id(), images, config.cms().copies_table, config.cms().marker_table
        )

    def run(self):
        numbered, _ = copies.load_copies(self.input()["made"].path)
        cms.load_copies(
            inputs.engine(),
            numbered.rows,
            self.run_id(),
            self.date.isoformat(),
            config.cms().copies_table,
            config.cms().marker_table,
            config.cms().batch_rows,
        )


def copies_loaded():
    """Whether the run loads its copies into the CMS: a CMS, a copies table, and copies made."""
    return bool(config.cms().url.strip() and config.cms().copies_table.strip() and copies_wanted())
