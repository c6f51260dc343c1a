"""The evaluation of a run's lists against labels and verdicts, and the index of the last run that
the query command and the web app read."""

import os

from pipeline import evaluation, verdicts
from pipeline.output import read_similarities
from pipeline.query import SimilarityIndex

from . import config, inputs
from .checks import RunCheck
from .extraction import Features
from .fitting import Codebook, Reducer
from .histograms import Histograms
from .neighbours import Similarities
from .verdicts import Verdicts


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
