"""Each image's thumbnail and preview for the web app (``pipeline.thumbnails``), brought up to date
with the run's images after the extraction."""

import dataclasses
import json
import os

import luigi

from pipeline import store
from pipeline.decoders import DecoderPool
from pipeline.images import decode_views
from pipeline.thumbnails import record, update_views

from . import config
from .base import Progress, Stage, artifacts_writable
from .extraction import Features, decoding


class Thumbnails(Stage):
    """The views of every image of the run in the store: those the extraction made moved in, the
    missing ones made by decoding their files, those of images gone forgotten. The store's
    metadata is its record: the identity of the run's feature index it was brought up to date with."""

    sections = ("images", "serve")

    def requires(self):
        return Features(date=self.date)

    def output(self):
        return luigi.LocalTarget(config.view_store().path)

    def record(self):
        meta = config.view_store().meta()
        return meta if "digest" in meta else None

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
                {"digest": self.made_identity(), "summary": json.dumps(summary)},
            )


def views_summary():
    """What the last Thumbnails run did (ViewsDone as a dict, ``failed`` counted), or None."""
    summary = config.view_store().meta().get("summary")
    return json.loads(summary) if summary else None
