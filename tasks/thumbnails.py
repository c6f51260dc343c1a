"""Each image's thumbnail and preview for the web app (``pipeline.thumbnails``), brought up to date
with the run's images after the extraction."""

import dataclasses
import json
import os

import luigi

from pipeline import store
from pipeline.decoders import DecoderPool
from pipeline.h5io import read_attrs
from pipeline.images import decode_views
from pipeline.thumbnails import record, update_views

from . import config
from .base import Progress, RunTask, artifacts_writable, requirements_complete
from .extraction import Features, decoding


class Thumbnails(RunTask):
    """The views of every image of the run in the store: those the extraction made moved in, the
    missing ones made by decoding their files, those of images gone forgotten. Complete while the
    store records the run's feature index (``features.h5``) it was brought up to date with."""

    def requires(self):
        return Features(date=self.date)

    def output(self):
        return luigi.LocalTarget(config.view_store().path)

    def complete(self):
        if not requirements_complete(self):
            return False
        return config.view_store().meta().get("features") == read_attrs(self.input().path)["digest"]

    def run(self):
        index = store.load_index(self.input().path)
        paths = [os.path.join(config.paths().content, f"PPN{p}", f) for p, f in zip(index.ppn, index.filename)]
        settings = decoding()
        with (
            artifacts_writable(),
            DecoderPool(
                settings["decode_processes"], settings["decode_timeout"], settings["max_pixels"], decode=decode_views
            ) as pool,
        ):
            done = update_views(
                config.view_store(), config.inbox(), index.ids, index.keys, paths, pool, Progress(self, "views made")
            )
            summary = {**dataclasses.asdict(done), "failed": len(done.failed), "run_date": self.date.isoformat()}
            record(
                config.view_store(),
                {"features": read_attrs(self.input().path)["digest"], "summary": json.dumps(summary)},
            )


def views_summary():
    """What the last Thumbnails run did (ViewsDone as a dict, ``failed`` counted), or None."""
    summary = config.view_store().meta().get("summary")
    return json.loads(summary) if summary else None
