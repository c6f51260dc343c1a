"""Each image's histogram of visual words: its shards, and histograms.h5 gathered from them."""

import json
import logging

from pipeline import extraction, histograms, store
from pipeline.codebook import Codebook as CodebookModel
from pipeline.h5io import read_attrs
from pipeline.reduction import Reducer as ReducerModel

from . import config
from .base import ArtifactTask, Progress, settings_digest
from .extraction import Features
from .fitting import Codebook, Reducer
from .inputs import LastRun, previous
from .shards import Shard, repairs, shard_attrs

logger = logging.getLogger("luigi-interface")


class HistogramInputs(ArtifactTask):
    """What the histograms are made from, for Histograms and its shards."""

    sections = ("histograms",)

    def inputs(self):
        return {
            "features": Features(date=self.date),
            "reducer": Reducer(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
            "previous": LastRun(date=self.date),
        }

    def made_from(self):
        return [t for t in self.inputs().values() if isinstance(t, ArtifactTask)]  # not the number of shards

    def previous(self):
        """The histograms of the previous run, when made with the current reducer, codebook and settings."""
        path = previous(self, Histograms.filename)
        try:
            attrs = read_attrs(path)
        except OSError:  # none, or unreadable
            return None
        if attrs.get("settings_digest") != settings_digest(Histograms.histogram_settings()):
            return None
        inputs, now = json.loads(attrs["inputs"]), self.input_identities()
        if any(inputs.get(stage) != now[stage] for stage in ("Reducer", "Codebook")):
            return None
        keys, counts, _ = histograms.load_counts(path)
        return keys, counts, histograms.load_words(path)


class HistogramShard(Shard, HistogramInputs):
    """The histograms of one shard of the run's images: those whose path hashes to it, as for
    the extraction (``pipeline.extraction.shard_of``); unchanged images keep the histogram of
    the last run's histograms.h5. Shards run independently, on any worker of any machine."""

    kind = "histograms"

    def requires(self):
        return self.inputs()

    def settings(self):
        return self.of_shard(Histograms.histogram_settings())

    def make(self, tmp):
        blocks = self.requires()["features"].blocks()
        index = blocks.index
        mine = extraction.in_shard([f"PPN{p}/{f}" for p, f in zip(index.ppn, index.filename)], self.shard, self.shards)
        counts, n_reused, words = histograms.compute_histograms(
            blocks.subset(mine),
            index.keys[mine],
            ReducerModel.load(self.input()["reducer"].path),
            CodebookModel.load(self.input()["codebook"].path),
            assign=config.histograms().assign,
            previous=self.previous(),
            checkpoints=self.checkpoints(),
            progress=Progress(self, "histograms of"),
        )
        attrs = self.attrs(reused=n_reused)
        histograms.save_histograms(
            tmp, index.keys[mine], counts, blocks.n_local(), attrs, config.histograms().assign, words
        )


class Histograms(HistogramInputs):
    """Each image's histogram of visual words, sparse, gathered from its shards."""

    filename = "histograms.h5"

    def requires(self):
        n = config.shards("histograms")
        return {**self.inputs(), "shards": [HistogramShard(**self.run_args(), shard=i, shards=n) for i in range(n)]}

    @staticmethod
    def histogram_settings():
        # "cells": the file holds each image's words per cell (pipeline.verify); "reduced": each
        # image's descriptors reduced by one float32 product of its own (Reducer.transform).
        # Files without either are made again
        return {**config.histograms().identity(), "cells": True, "reduced": "float32 per image"}

    def settings(self):
        return self.histogram_settings()

    def make(self, tmp):
        index = store.load_index(self.input()["features"].path)
        shards = [histograms.load_counts(t.path) for t in self.input()["shards"]]
        parts = [(k, c, histograms.load_words(t.path)) for (k, c, _), t in zip(shards, self.input()["shards"])]
        keys, counts, words = histograms.gather(index.keys, parts)
        attrs, ran = shard_attrs(self)
        attrs = self.attrs(
            reused=sum(a["reused"] for a in attrs),
            shards=len(attrs),
            shard_seconds=round(sum(a["seconds"] for a in ran), 3),
            **repairs(self, ran),
        )
        histograms.save_histograms(tmp, keys, counts, shards[0][2], attrs, config.histograms().assign, words)
