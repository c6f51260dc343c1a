"""The map of the collection (``pipeline.atlas``): its layout, fitted with the codebook and kept
until the next refit, and every image's place on it, made each night."""

from pipeline import histograms, store
from pipeline.atlas import MapLayout as LayoutModel
from pipeline.atlas import save_map
from pipeline.codebook import Codebook as CodebookModel
from pipeline.weighting import WeightedHistograms

from . import config
from .base import ArtifactTask
from .extraction import Features
from .fitting import Codebook
from .histograms import Histograms


def weighted(histograms_path, codebook_path, ids):
    """The run's weighted histograms, as its neighbours are found between them."""
    _, counts, n_local = histograms.load_counts(histograms_path)
    return WeightedHistograms.from_codebook(
        counts,
        n_local,
        ids,
        CodebookModel.load(codebook_path),
        histograms.load_assign(histograms_path),
        config.neighbour_settings().distance,
    )


class MapLayout(ArtifactTask):
    """The map's layout, fitted on a sample of the run's histograms; kept while the codebook is."""

    filename = "map_layout.h5"
    remade = "refitted; every image may move on the map"
    sections = ("codebook", "neighbours")

    def requires(self):
        return {
            "features": Features(date=self.date),
            "histograms": Histograms(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
        }

    def made_from(self):
        return [self.requires()["codebook"]]

    def settings(self):
        return {"seed": config.codebook().seed, "distance": str(config.neighbour_settings().distance)}

    def make(self, tmp):
        ids = store.load_index(self.input()["features"].path).ids
        data = weighted(self.input()["histograms"].path, self.input()["codebook"].path, ids)
        LayoutModel(random_state=config.codebook().seed).fit(data.vectors).save(tmp, self.attrs())


class Map(ArtifactTask):
    """Each image's place on the map, ``map.h5`` (database IDs and places in the unit square)."""

    filename = "map.h5"
    sections = ("codebook", "neighbours")

    def requires(self):
        return {
            "features": Features(date=self.date),
            "histograms": Histograms(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
            "layout": MapLayout(**self.run_args()),
        }

    def made_from(self):
        return [self.requires()["histograms"], self.requires()["layout"]]

    def make(self, tmp):
        ids = store.load_index(self.input()["features"].path).ids
        data = weighted(self.input()["histograms"].path, self.input()["codebook"].path, ids)
        layout = LayoutModel.load(self.input()["layout"].path)
        save_map(tmp, ids, layout.transform(data.vectors, ids), self.attrs(images=len(ids)))
