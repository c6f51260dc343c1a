"""Where a night's lists go in the CMS (:class:`Destination`) and how much of them a load writes
(:class:`LoadPlan`): the plan the load task and the benchmarks follow."""

import dataclasses
import logging

import numpy as np

from .load import holds_load, load_siblings, load_similarities, loaded_run
from .schema import BATCH_ROWS, MARKER_TABLE, TABLE, siblings_target

logger = logging.getLogger(__name__)

#: Most share of changed images an incremental load writes; past it, replacing every row is as cheap.
INCREMENTAL_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where the lists are loaded: a table of (image, rank, neighbour, distance) rows (``mode``
    table), or each image's neighbour IDs in a column of the CMS's images table (siblings);
    the shipped settings by default."""

    mode: str = "table"
    table: str = TABLE
    marker_table: str = MARKER_TABLE
    images_table: str = "images"
    id_column: str = "id"
    siblings_column: str = "siblings"
    batch_rows: int = BATCH_ROWS

    @property
    def siblings(self):
        """The siblings mode's (images_table, id_column, siblings_column), or None in table mode."""
        return (self.images_table, self.id_column, self.siblings_column) if self.mode == "siblings" else None

    @property
    def target(self):
        """What the marker table calls this destination."""
        return siblings_target(self.images_table, self.siblings_column) if self.mode == "siblings" else self.table

    def holds(self, engine, run_id, ids, written=None):
        """Whether it holds the load of ``run_id`` (:func:`pipeline.cms.holds_load`)."""
        return holds_load(engine, run_id, ids, self.table, self.marker_table, siblings=self.siblings, written=written)


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """What a load writes: every row (``changed`` None, and ``why_whole`` says why), or only the
    rows of the images whose list changed and of those ``removed``."""

    changed: np.ndarray = None
    removed: np.ndarray = ()
    why_whole: str = None


def plan_load(engine, destination, result, share=None):
    """The :class:`LoadPlan` of ``result`` (``pipeline.output.read_similarities``): only the
    changed rows when the destination holds the load of the run they were compared with and
    at most ``share`` (by default :data:`INCREMENTAL_SHARE`) of the images changed; else every row."""
    share = INCREMENTAL_SHARE if share is None else share
    if "changed" not in result:
        return LoadPlan(why_whole="no earlier run to compare with")
    changed = result["changed"]
    if changed.mean() > share:
        return LoadPlan(why_whole=f"{changed.mean():.0%} of the images changed")
    earlier = result["attrs"].get("earlier_digest")
    if not destination.holds(engine, earlier, result["ids"][~changed], written=[]):
        return LoadPlan(why_whole=f"{destination.target} does not hold the load of the earlier run {earlier}")
    return LoadPlan(changed, result["removed"])


def load_lists(engine, destination, result, run_id, run_date, plan=None):
    """Bring ``destination`` to the lists of ``result`` (``pipeline.output.read_similarities``)
    as ``plan`` says (by default :func:`plan_load`'s), in one transaction with its marker row.
    Returns the plan followed."""
    if loaded_run(engine, destination.target, destination.marker_table) == run_id:
        logger.warning(
            "%s no longer holds the rows of run %s that the marker table records (dropped, emptied or restored "
            "outside the pipeline): loading them again",
            destination.target,
            run_id,
        )
    plan = plan_load(engine, destination, result) if plan is None else plan
    if plan.why_whole is not None:
        logger.info("every row is loaded into %s (%s)", destination.target, plan.why_whole)
    common = dict(
        run_id=run_id,
        run_date=run_date,
        marker_table=destination.marker_table,
        batch_rows=destination.batch_rows,
        changed=plan.changed,
        removed=plan.removed,
    )
    if destination.mode == "siblings":
        load_siblings(
            engine,
            result["ids"],
            result["neighbours"],
            images_table=destination.images_table,
            id_column=destination.id_column,
            siblings_column=destination.siblings_column,
            **common,
        )
    else:
        load_similarities(
            engine, result["ids"], result["neighbours"], result["distances"], table=destination.table, **common
        )
    return plan
