"""The CMS database: its URL and engine (:mod:`.url`), the ID mapping read from it
(:mod:`.mapping`), the tables the pipeline writes (:mod:`.schema`), and the loads, each in one
transaction with its marker row (:mod:`.load`), and where and how much a night's load writes
(:mod:`.plan`)."""

from .load import (
    holds_copies,
    holds_load,
    load_copies,
    load_siblings,
    load_similarities,
    loaded_run,
    sampled_ids,
)
from .mapping import read_mapping
from .plan import INCREMENTAL_SHARE, Destination, LoadPlan, load_lists, plan_load
from .schema import BATCH_ROWS, MARKER_TABLE, TABLE, copies_table, siblings_target, similarity_tables
from .url import connect, reachable, resolve_url, shown

__all__ = [
    "BATCH_ROWS",
    "INCREMENTAL_SHARE",
    "Destination",
    "LoadPlan",
    "MARKER_TABLE",
    "TABLE",
    "connect",
    "copies_table",
    "holds_copies",
    "holds_load",
    "load_copies",
    "load_siblings",
    "load_similarities",
    "load_lists",
    "loaded_run",
    "plan_load",
    "reachable",
    "read_mapping",
    "resolve_url",
    "sampled_ids",
    "shown",
    "siblings_target",
    "similarity_tables",
]
