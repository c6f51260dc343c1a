"""The CMS loads, each in one transaction: this run's similarities into ``[cms] table`` (or the siblings
column), and its groups of copies into ``[cms] copies_table``."""

import logging

import h5py

from pipeline import cms, copies
from pipeline.h5io import read_attrs, read_ids
from pipeline.output import read_similarities

from . import config, inputs
from .base import RunTask, requirements_complete
from .copies import Copies, copies_wanted
from .neighbours import Similarities

logger = logging.getLogger("luigi-interface")


class LoadSimilarities(RunTask):
    """``luigi --module tasks LoadSimilarities --local-scheduler``: this run's similarities into ``[cms] table``.

    One transaction brings the table to this run's rows and writes the marker row: only the
    rows of images whose list changed since the earlier run (and those of removed images) when
    the table holds the earlier run's load and at most INCREMENTAL_SHARE of the images changed,
    else every row. The load is complete when the last marker row for the table names this
    run's similarities and the table still holds them (:func:`pipeline.cms.holds_load`): a
    rerun of a loaded run does nothing, and a table dropped or emptied outside the pipeline is
    loaded again, whole, by the next run.
    """

    #: Most share of changed images an incremental load writes; past it, replacing every row is as cheap.
    INCREMENTAL_SHARE = 0.5

    def requires(self):
        # the database first: a server that does not answer is a missing input (exit code 20), the lists kept
        return {"made": Similarities(**self.run_args()), "cms": inputs.CmsDatabase(date=self.date)}

    def run_id(self):
        """The identity of the similarities to load: the digest of similarities.hdf5."""
        return read_attrs(self.input()["made"].path)["digest"]

    def siblings(self):
        """The siblings mode's target, or None in table mode."""
        c = config.cms()
        return (c.images_table, c.id_column, c.siblings_column) if c.mode == "siblings" else None

    def target(self):
        """What the marker table calls this load's destination."""
        if config.cms().mode == "siblings":
            return cms.siblings_target(config.cms().images_table, config.cms().siblings_column)
        return config.cms().table

    def holds(self, run_id, ids, written=None):
        return cms.holds_load(
            inputs.engine(),
            run_id,
            ids,
            config.cms().table,
            config.cms().marker_table,
            siblings=self.siblings(),
            written=written,
        )

    def complete(self):
        if not requirements_complete(self):
            return False
        with h5py.File(self.input()["made"].path, "r") as f:
            ids = read_ids(f["ids"])
            written = ids[f["changed"][:]] if "changed" in f else ids
        return self.holds(self.run_id(), ids, written)

    def incremental(self, result):
        """Whether this load can write only the changed rows: the table holds the load of the run
        they were compared with, and few enough changed. Returns the reason when not."""
        earlier = result["attrs"].get("earlier_digest")
        if "changed" not in result:
            return "no earlier run to compare with"
        if result["changed"].mean() > self.INCREMENTAL_SHARE:
            return f"{result['changed'].mean():.0%} of the images changed"
        if not self.holds(earlier, result["ids"][~result["changed"]], written=[]):
            return f"{self.target()} does not hold the load of the earlier run {earlier}"
        return None

    def run(self):
        result = read_similarities(self.input()["made"].path)
        common = dict(run_id=self.run_id(), run_date=self.date.isoformat(), marker_table=config.cms().marker_table)
        if cms.loaded_run(inputs.engine(), self.target(), config.cms().marker_table) == common["run_id"]:
            logger.warning(
                "%s no longer holds the rows of run %s that the marker table records (dropped, emptied or restored "
                "outside the pipeline): loading them again",
                self.target(),
                common["run_id"],
            )
        why_whole = self.incremental(result)
        if why_whole is None:
            common.update(changed=result["changed"], removed=result["removed"])
        else:
            logger.info("%s: every row is loaded (%s)", self.task_family, why_whole)
        if config.cms().mode == "siblings":
            cms.load_siblings(
                inputs.engine(),
                result["ids"],
                result["neighbours"],
                images_table=config.cms().images_table,
                id_column=config.cms().id_column,
                siblings_column=config.cms().siblings_column,
                batch_rows=config.cms().batch_rows,
                **common,
            )
        else:
            cms.load_similarities(
                inputs.engine(),
                result["ids"],
                result["neighbours"],
                result["distances"],
                table=config.cms().table,
                batch_rows=config.cms().batch_rows,
                **common,
            )


class LoadCopies(RunTask):
    """``luigi --module tasks LoadCopies --local-scheduler``: this run's groups of copies into
    ``[cms] copies_table``, the table's rows replaced in one transaction with its marker row.

    Complete when the last marker row for the table names this run's copies.h5 and the table
    holds its rows."""

    def requires(self):
        return {"made": Copies(**self.run_args()), "cms": inputs.CmsDatabase(date=self.date)}

    def run_id(self):
        """The identity of the copies to load: the digest of copies.h5."""
        return read_attrs(self.input()["made"].path)["digest"]

    def complete(self):
        if not requirements_complete(self):
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
