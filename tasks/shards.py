"""What the sharded stages share: a shard's artifact and place, and the gathering of the shards' records."""

import logging
import os

import luigi

from pipeline.h5io import read_attrs

from . import config

logger = logging.getLogger("luigi-interface")


def shard_attrs(task):
    """The attributes of the artifacts of ``task``'s shards, all and those made by this run."""
    shards = [read_attrs(t.path) for t in task.input()["shards"]]
    return shards, [a for a in shards if a["run_date"] == task.date.isoformat()]


def repairs(task, ran, *more):
    """``repaired``: the warnings of ``task``'s own repair, of its shards that ran (their attributes
    ``ran``) and ``more``, in one line for the run report; empty when there were none."""
    notes = [getattr(task, "_repaired", None), *(a.get("repaired") for a in ran), *more]
    notes = [note for note in notes if note]
    return {"repaired": "; ".join(notes)} if notes else {}


class Shard:
    """One of ``shards`` parts of a sharded stage's work (its ``kind``), with its artifact
    ``<artifacts>/shards/<kind>-<shard>-of-<shards>.h5``."""

    shard = luigi.IntParameter(description="This shard, 0 .. shards - 1.")
    shards = luigi.IntParameter(description="Number of shards, [<stage>] shards.")
    kind = None

    def output(self):
        name = f"{self.kind}-{self.shard:04d}-of-{self.shards:04d}.h5"
        return luigi.LocalTarget(os.path.join(config.paths().artifacts, "shards", name), format=luigi.format.Nop)

    def of_shard(self, settings):
        """The settings of the stage, with this shard's place: each shard is an artifact of its own."""
        return {**settings, "shard": self.shard, "shards": self.shards}
