"""The checks of a run: the self-check with altered copies (which sets the verification's threshold),
and what checks and queries share."""

import logging
import os
import tempfile

import luigi

from pipeline import backends, collection
from pipeline.query import SimilarityIndex
from pipeline.report import read_json, write_json
from pipeline.selfcheck import self_check

from . import config
from .base import Stage, artifacts_writable
from .extraction import Features, decoding
from .fitting import Codebook, Reducer
from .histograms import Histograms
from .inventory import Inventory

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
