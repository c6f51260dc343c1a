"""The checks of a run's neighbours (the evaluation against labels, the self-check with altered
copies), and the index of the last run that they and the query command read."""

import logging
import os
import tempfile

import luigi

from pipeline import backends, collection, evaluation, verdicts
from pipeline.output import read_similarities
from pipeline.query import SimilarityIndex
from pipeline.report import read_json, write_json
from pipeline.selfcheck import self_check

from . import config, inputs
from .base import Stage, artifacts_writable
from .extraction import Features, decoding
from .fitting import Codebook, Reducer
from .histograms import Histograms
from .inventory import Inventory
from .neighbours import Similarities
from .verdicts import Verdicts

logger = logging.getLogger("luigi-interface")


class RunCheck(Stage):
    """A check of this run's neighbours, written to ``<artifacts>/<filename>`` (JSON) with its
    settings and identity."""

    filename = None

    def output(self):
        return luigi.LocalTarget(os.path.join(config.paths().artifacts, self.filename))

    def record(self):
        return read_json(self.output().path)

    def write(self, result):
        identity = {"settings": self.settings(), "digest": self.made_identity()}
        with artifacts_writable():
            write_json(self.output().path, {"date": self.date.isoformat(), **result, **identity})


class Evaluate(RunCheck):
    """``luigi --module tasks Evaluate --local-scheduler``: this run's raw lists (before the verdicts
    are applied, so that they never score themselves) against ``[evaluate] labels`` (precision,
    recall and mAP) and against the verdicts, into ``<artifacts>/evaluation.json``."""

    filename = "evaluation.json"
    sections = ("evaluate", "verdicts")

    def requires(self):
        required = {"similarities": Similarities(**self.run_args()), "verdicts": Verdicts(date=self.date)}
        if config.evaluate().labels.strip():
            required["labels"] = inputs.LabelsFile(date=self.date, path=config.evaluate().labels)
        return required

    def settings(self):
        """The labels file, by its path, size and time."""
        try:
            labels = os.stat(config.evaluate().labels) if config.evaluate().labels.strip() else None
        except OSError:  # LabelsFile names it
            return {"labels": None}
        return {"labels": labels and [os.path.abspath(config.evaluate().labels), labels.st_size, labels.st_mtime_ns]}

    def run(self):
        labels = None
        if "labels" in self.input():
            labels = evaluation.read_labels(self.input()["labels"].path)
        honoured = None
        if config.verdict_source()[0] != "none":
            honoured = verdicts.load_verdicts(self.input()["verdicts"].path)[0]
        result = read_similarities(self.input()["similarities"].path)
        self.write(evaluation.score_night(result, labels, honoured, config.evaluate().labels))


def latest_index():
    """The :class:`~pipeline.query.SimilarityIndex` of the artifacts the last run left."""
    stages = (Features, Reducer, Codebook, Histograms, Similarities)
    return SimilarityIndex.load(*(os.path.join(config.paths().artifacts, stage.filename) for stage in stages))


def query_extractor(spec, folder, batch_size=None):
    """A DescriptorExtractor of the :class:`~pipeline.backends.ModelSpec` ``spec`` (a SimilarityIndex's
    ``spec`` and ``store``: the model and image preparation of its run), with this machine's decoding
    settings, ``batch_size`` images per forward pass (default ``[resnet] batch_size``)."""
    return backends.extractor(spec, folder, batch_size or config.resnet().batch_size, **decoding())


class SelfCheck(RunCheck):
    """``luigi --module tasks SelfCheck --local-scheduler``: how often altered copies of a sample of
    the collection find their original, into ``<artifacts>/selfcheck.json``; part of every
    run unless ``[selfcheck] sample = 0``."""

    filename = "selfcheck.json"
    sections = ("selfcheck", "resnet", "images")

    def requires(self):
        return {
            "inventory": Inventory(date=self.date),
            "features": Features(date=self.date),
            "reducer": Reducer(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
            "histograms": Histograms(**self.run_args()),
        }

    def settings(self):
        return {**config.selfcheck().identity(), "neighbours": config.neighbour_settings().identity()}

    def run(self):
        settings = config.neighbour_settings()
        paths = [self.input()[name].path for name in ("features", "reducer", "codebook", "histograms")]
        index = SimilarityIndex.of_run(*paths, settings.distance)
        files = collection.load_inventory(self.input()["inventory"].path).paths(
            index.images.ids, config.paths().content
        )
        with (
            query_extractor(index.spec, index.store) as extractor,
            tempfile.TemporaryDirectory(prefix="selfcheck-") as copies,
        ):
            result = self_check(
                index,
                extractor,
                files,
                copies,
                sample=config.selfcheck().sample,
                seed=config.selfcheck().seed,
                k=min(settings.k, len(files) - 1),
                candidates=settings.candidates,
                rerank=settings.rerank,
            )
        self.write(result)
