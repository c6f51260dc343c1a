"""The stages from content/ to similarities.hdf5, one Luigi task each."""

import hashlib
import json
import os

import luigi

from pipeline import collection, features, histograms, output, store
from pipeline.codebook import Codebook as CodebookModel, fit_codebook
from pipeline.neighbours import balltree_neighbours
from pipeline.reduction import Reducer as ReducerModel

from .base import ArtifactTask
from .config import codebook, ids, neighbours, paths, reduction, resnet


class ContentFolder(luigi.ExternalTask):
    """The collection: ``[paths] content``."""

    path = luigi.Parameter(description="The collection's folder.")

    def output(self):
        return luigi.LocalTarget(self.path)


class IdMapping(luigi.ExternalTask):
    """The CMS's ID mapping: ``[ids] csv``."""

    path = luigi.Parameter(description="The ID mapping CSV file.")

    def output(self):
        return luigi.LocalTarget(self.path)


class Inventory(ArtifactTask):
    """Images both on disk and in the ID mapping; the others counted and listed."""

    filename = "inventory.h5"

    def requires(self):
        # the paths as parameters, so a missing input is named in Luigi's summary
        return {"content": ContentFolder(path=paths().content), "mapping": IdMapping(path=ids().csv)}

    def settings(self):
        try:
            csv = os.stat(ids().csv)
            fingerprint = [csv.st_size, csv.st_mtime_ns]
        except OSError:  # IdMapping reports the missing file
            fingerprint = None
        return {
            "content": os.path.abspath(paths().content),
            "csv": os.path.abspath(ids().csv),
            "csv_fingerprint": fingerprint,
        }

    def run(self):
        inventory = collection.take_inventory(paths().content, ids().csv)
        with self.atomic_output() as tmp:
            collection.save_inventory(tmp, inventory, self.attrs())


class Features(ArtifactTask):
    """ResNet50 descriptors of every inventory image, kept in the feature store of the model."""

    filename = "features.h5"

    def requires(self):
        return Inventory()

    def settings(self):
        if getattr(self, "_settings", None) is None:  # hashing a weights file once is enough
            self._settings = {
                "model": features.MODEL,
                "layer": resnet().layer,
                "weights": features.weights_identity(resnet().weights),
                "seed": resnet().seed if resnet().weights == "random" else None,
            }
        return self._settings

    def store(self):
        """The store of this model configuration, shared by every run that uses it."""
        key = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]
        return store.FeatureStore(os.path.join(paths().artifacts, "features", key))

    def attrs(self):
        return {**super().attrs(), "model": features.MODEL, "layer": resnet().layer, "weights": resnet().weights}

    def run(self):
        index = store.extract_features(
            self.store(),
            collection.load_inventory(self.input().path),
            paths().content,
            weights=resnet().weights,
            layer=resnet().layer,
            seed=resnet().seed,
            batch_size=resnet().batch_size,
            decode_threads=resnet().decode_threads,
        )
        with self.atomic_output() as tmp:
            store.save_index(tmp, index, self.attrs())


class Reducer(ArtifactTask):
    """StandardScaler + PCA fitted on every descriptor of the collection."""

    filename = "reducer.h5"

    def requires(self):
        return Features()

    def settings(self):
        return {"variance": reduction().variance}

    def run(self):
        index = store.load_index(self.input().path)
        reducer = ReducerModel(reduction().variance).fit(store.iter_descriptor_rows(self.requires().store(), index))
        with self.atomic_output() as tmp:
            reducer.save(tmp, self.attrs())


class Codebook(ArtifactTask):
    """k-means visual words over a sample of the reduced descriptors."""

    filename = "codebook.h5"

    def requires(self):
        return {"features": Features(), "reducer": Reducer()}

    def settings(self):
        return {"size": str(codebook().size), "sample_size": codebook().sample_size, "seed": codebook().seed}

    def run(self):
        feature_store = self.requires()["features"].store()
        index = store.load_index(self.input()["features"].path)
        model = fit_codebook(
            store.iter_descriptors(feature_store, index),
            len(index),
            store.local_descriptor_count(feature_store, index),
            ReducerModel.load(self.input()["reducer"].path),
            size=codebook().size,
            sample_size=codebook().sample_size,
            random_state=codebook().seed,
        )
        with self.atomic_output() as tmp:
            model.save(tmp, self.attrs())


class Histograms(ArtifactTask):
    """Each image's histogram of visual words, sparse."""

    filename = "histograms.h5"

    def requires(self):
        return {"features": Features(), "reducer": Reducer(), "codebook": Codebook()}

    def run(self):
        index = store.load_index(self.input()["features"].path)
        counts, n_local = histograms.compute_histograms(
            store.iter_descriptors(self.requires()["features"].store(), index),
            len(index),
            ReducerModel.load(self.input()["reducer"].path),
            CodebookModel.load(self.input()["codebook"].path),
        )
        with self.atomic_output() as tmp:
            histograms.save_histograms(tmp, counts, n_local, self.attrs())


class Similarities(ArtifactTask):
    """Every image's k nearest other images, keyed to database IDs: similarities.hdf5."""

    filename = "similarities.hdf5"

    def requires(self):
        return {"features": Features(), "codebook": Codebook(), "histograms": Histograms()}

    def settings(self):
        return {"k": neighbours().k, "metric": "euclidean"}

    def attrs(self):
        attrs = {
            **super().attrs(),
            "metric": "euclidean",
            "codebook_size": CodebookModel.load(self.input()["codebook"].path).size,
            "model": features.MODEL,
            "layer": resnet().layer,
            "weights": resnet().weights,
        }
        if resnet().weights == "random":
            attrs["weights_note"] = features.RANDOM_WEIGHTS_NOTE
        return attrs

    def run(self):
        index = store.load_index(self.input()["features"].path)
        nearest, distances = balltree_neighbours(
            histograms.load_histograms(self.input()["histograms"].path), index.ids, k=neighbours().k
        )
        with self.atomic_output() as tmp:
            output.write_similarities(tmp, index.ids, index.ppn, index.filename, nearest, distances, self.attrs())
