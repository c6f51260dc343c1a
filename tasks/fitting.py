"""The reducer (StandardScaler + PCA) and the k-means codebook, frozen across runs until a refit."""

import logging
import os

from pipeline.codebook import DESCRIPTORS_PER_WORD, fit_codebook
from pipeline.codebook import FORMAT as CODEBOOK_FORMAT
from pipeline.h5io import read_attrs, read_problem
from pipeline.reduction import Reducer as ReducerModel
from pipeline.reduction import fit_reducer

from . import config
from .base import ArtifactTask, settings_digest
from .extraction import Features

logger = logging.getLogger("luigi-interface")


def fitted_before():
    """Whether an earlier run fitted the reducer and codebook: its histograms (made from them) are there."""
    return os.path.exists(os.path.join(config.paths().artifacts, "histograms.h5"))


def codebook_lost():
    """Why the codebook is gone (missing or unreadable), or None. A codebook fitted again on
    today's images differs from the lost one while its identity, made from the reducer's, would
    not: so the reducer is refitted with it, and whatever was made from the two is made anew."""
    path = os.path.join(config.paths().artifacts, Codebook.filename)
    try:
        read_attrs(path)
    except FileNotFoundError:
        return "missing" if fitted_before() else None
    except OSError as exc:
        return f"unreadable ({read_problem(exc)})"
    return None


class Reducer(ArtifactTask):
    """StandardScaler + PCA over every descriptor of a sample of images; kept across runs until a refit."""

    filename = "reducer.h5"
    remade = "refitted (the codebook with it); every list may change"
    kept = True  # valid for any later run with the same settings, until a refit
    sections = ("reduction", "codebook")

    def made_before(self):
        return fitted_before()

    def requires(self):
        return Features(date=self.date)

    def settings(self):
        return {**config.reduction().identity(), "features": settings_digest(self.requires().settings())}

    def outdated(self, record):
        if self.refit and record["run_date"] != self.date.isoformat():
            return "a refit was asked for"
        lost = record["run_date"] != self.date.isoformat() and codebook_lost()
        if lost:
            return f"the codebook fitted with it is {lost}"
        images_now = self.requires().record()
        growth = config.codebook().refit_growth
        if images_now is not None and images_now["images"] > record["images"] * (1 + growth):
            return f"the collection has grown past [codebook] refit_growth={growth:g} since the fit"
        return None

    def make(self, tmp):
        blocks, settings = self.requires().blocks(), config.reduction()
        reducer = fit_reducer(
            blocks,
            settings.variance,
            settings.descriptors,
            settings.reduced,
            settings.sample_images,
            settings.seed,
            checkpoints=self.checkpoints(),
        )
        reducer.save(tmp, self.attrs(images=len(blocks.index)))


class Codebook(ArtifactTask):
    """k-means visual words over a sample of the reduced descriptors; refitted with the reducer."""

    filename = "codebook.h5"
    remade = "refitted; every list may change"
    sections = ("codebook",)

    def made_before(self):
        return fitted_before()

    def requires(self):
        return {"features": Features(date=self.date), "reducer": Reducer(**self.run_args())}

    def made_from(self):
        return [self.requires()["reducer"]]

    def settings(self):
        settings = {**config.codebook().identity(), "format": CODEBOOK_FORMAT}
        if config.codebook().size == "auto":  # a new rule for auto refits the codebook
            settings["descriptors_per_word"] = DESCRIPTORS_PER_WORD
        return settings

    def make(self, tmp):
        model = fit_codebook(
            self.requires()["features"].blocks(),
            ReducerModel.load(self.input()["reducer"].path),
            size=config.codebook().size,
            sample_size=config.codebook().sample_size,
            random_state=config.codebook().seed,
        )
        model.save(tmp, self.attrs())
