"""The stages from content/ to similarities.hdf5, one Luigi task each."""

import datetime
import json
import logging
import os
import tempfile

import h5py
import luigi

from pipeline import blocks, collection, evaluation, extraction, features, histograms, output, store
from pipeline import cms as cms_db
from pipeline.blocks import sample_images
from pipeline.codebook import DESCRIPTORS_PER_WORD, check_size, fit_codebook
from pipeline.codebook import Codebook as CodebookModel
from pipeline.errors import ConfigError
from pipeline.h5io import read_attrs, read_ids
from pipeline.neighbours import Counts, check_k, nearest_neighbours
from pipeline.output import read_similarities
from pipeline.query import SimilarityIndex
from pipeline.reduction import Reducer as ReducerModel
from pipeline.report import read_json, write_json
from pipeline.selfcheck import self_check

from . import database
from .base import ArtifactTask, Progress, RunInput, RunTask, artifacts_writable, settings_digest
from .config import cms, codebook, ids, neighbours, paths, reduction, resnet, settings_problem
from .config import collection as collection_config
from .config import evaluate as evaluate_config
from .config import features as features_config
from .config import histograms as histograms_config
from .config import images as images_config
from .config import selfcheck as selfcheck_config

logger = logging.getLogger("luigi-interface")


class ContentFolder(RunInput):
    """The collection: ``[paths] content``."""

    path = luigi.Parameter(description="The collection's folder.")

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return (
            f"[paths] content={self.path!r} does not exist; set it to the folder that holds the PPN<id>/ folders "
            "(or mount the storage it is on)"
        )


class IdMapping(RunInput):
    """The CMS's ID mapping: ``[ids] csv``."""

    path = luigi.Parameter(description="The ID mapping CSV file.")

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return (
            f"[ids] csv={self.path!r} does not exist; export the CMS's images to it (id,ppn,filename) "
            "or read them from the CMS with [ids] source = cms"
        )


class CheckSettings(RunTask):
    """The settings of luigi.cfg, checked before any work: complete when every one can work,
    failing with a one-line message naming the setting and the fix when one cannot."""

    def complete(self):
        return settings_problem() is None

    def run(self):
        raise ConfigError(settings_problem())


def read_id_mapping():
    """The ID mapping of ``[ids] source`` and the words naming where it came from."""
    if ids().source == "cms":
        return database.read_mapping()
    return collection.read_mapping(ids().csv), f"[ids] csv={ids().csv!r}"


class Inventory(ArtifactTask):
    """The images both on disk and in the ID mapping, taken once per run date."""

    filename = "inventory.h5"

    def requires(self):
        # the paths as parameters, so a missing input is named in Luigi's summary
        mapping = (
            IdMapping(date=self.date, path=ids().csv) if ids().source == "csv" else database.CmsImages(date=self.date)
        )
        return {
            "settings": CheckSettings(date=self.date),
            "content": ContentFolder(date=self.date, path=paths().content),
            "mapping": mapping,
        }

    def settings(self):
        settings = {
            "date": self.date.isoformat(),
            "content": os.path.abspath(paths().content),
            "fingerprint": collection_config().fingerprint,
            "source": ids().source,
        }
        if ids().source == "cms":  # read again on every run date
            c = cms()
            settings["cms"] = [c.url, c.images_table, c.id_column, c.ppn_column, c.filename_column, c.ids_query]
            return settings
        try:
            csv = os.stat(ids().csv)
            csv_fingerprint = [csv.st_size, csv.st_mtime_ns]
        except OSError:  # IdMapping reports the missing file
            csv_fingerprint = None
        return {**settings, "csv": os.path.abspath(ids().csv), "csv_fingerprint": csv_fingerprint}

    def digest(self):
        # of the settings (the date among them) and of what was found
        return settings_digest({"settings": self.settings(), "images": self._found})

    def make(self, tmp):
        inventory = collection.take_inventory(paths().content, *read_id_mapping(), collection_config().fingerprint)
        # the settings that depend on the collection's size, before any image is extracted
        check_k(neighbours().k, len(inventory))
        n_local = features.layer_side(resnet().layer) ** 2
        check_size(codebook().size, len(inventory), n_local, codebook().sample_size)
        self._found = inventory.fingerprint()
        previous = self.recorded() and collection.load_inventory(self.output().path)
        removed = collection.removed_images(previous, inventory) if previous else []
        if removed:
            logger.info("%d images of the previous run are gone: %s", len(removed), ", ".join(removed[:20]))
        started = datetime.datetime.fromtimestamp(self._started, datetime.UTC).isoformat(timespec="seconds")
        collection.save_inventory(
            tmp, inventory, self.attrs(images_total=len(inventory), removed=len(removed), started=started)
        )


def feature_settings(layer=None):
    """The settings the descriptors depend on (the feature store's identity), of ``[resnet] layer``
    or of another layer."""
    return {
        "model": features.MODEL,
        "layer": layer or resnet().layer,
        "weights": features.weights_identity(resnet().weights),
        "seed": resnet().seed if resnet().weights == "random" else None,
        "store_format": store.FORMAT,
    }


def feature_store(settings):
    """The feature store of the descriptors made with ``settings`` (:func:`feature_settings`)."""
    return store.FeatureStore(os.path.join(paths().artifacts, "features", settings_digest(settings)))


class FeatureShard(ArtifactTask):
    """The descriptors of one shard of the inventory's images, extracted into the feature store.

    An image's shard is a stable hash of its path (``pipeline.extraction.shard_of``), so shards
    never reshuffle as images come and go; shards run independently, on any worker of any
    machine sharing the artifacts folder. The artifact is a small record of the shard's counts.
    """

    shard = luigi.IntParameter(description="This shard, 0 .. shards - 1.")
    shards = luigi.IntParameter(description="Number of shards, [features] shards.")

    def requires(self):
        return Inventory(date=self.date)

    def output(self):
        name = f"features-{self.shard:04d}-of-{self.shards:04d}.h5"
        return luigi.LocalTarget(os.path.join(paths().artifacts, "shards", name), format=luigi.format.Nop)

    def settings(self):
        if getattr(self, "_settings", None) is None:  # hashing a weights file once is enough
            self._settings = {**feature_settings(), "shard": self.shard, "shards": self.shards}
        return self._settings

    def make(self, tmp):
        files = [
            f
            for f in collection.load_inventory(self.input().path).files
            if extraction.shard_of(f.relpath, self.shards) == self.shard
        ]
        n_extracted, n_reused = extraction.extract_features(
            Features(date=self.date).store(),
            files,
            paths().content,
            weights=resnet().weights,
            layer=resnet().layer,
            seed=resnet().seed,
            batch_size=resnet().batch_size,
            progress=Progress(self, "extracted"),
            decode_processes=images_config().decode_processes,
            decode_timeout=images_config().decode_timeout,
            max_pixels=images_config().max_pixels,
        )
        with h5py.File(tmp, "w") as f:
            f.attrs.update(self.attrs(images=len(files), extracted=n_extracted, reused=n_reused))


class Features(ArtifactTask):
    """Where every inventory image's descriptors are in the feature store of the model,
    once every shard has extracted its images."""

    filename = "features.h5"

    def requires(self):
        n = features_config().shards
        return {
            "inventory": Inventory(date=self.date),
            "shards": [FeatureShard(date=self.date, shard=i, shards=n) for i in range(n)],
        }

    def tracked(self):
        return [self.requires()["inventory"]]  # the number of shards does not change the result

    def settings(self):
        if getattr(self, "_settings", None) is None:
            self._settings = feature_settings()
        return self._settings

    def store(self):
        """The store of this model configuration, shared by every run that uses it."""
        return feature_store(self.settings())

    def blocks(self):
        """The descriptors of this run's images, block by block."""
        return blocks.DescriptorBlocks(self.store(), store.load_index(self.output().path))

    def make(self, tmp):
        feature_store = self.store()
        feature_store.remove_stale_temporaries()  # every shard has finished
        index = store.index_inventory(feature_store, collection.load_inventory(self.input()["inventory"].path))
        date = self.date.isoformat()
        shards = [read_attrs(t.path) for t in self.input()["shards"]]
        ran = [a for a in shards if a["run_date"] == date]
        extracted = sum(a["extracted"] for a in ran)
        attrs = self.attrs(
            images=len(index), extracted=extracted, reused=len(index) + len(index.rejected) - extracted,
            shards=len(shards), shard_seconds=round(sum(a["seconds"] for a in ran), 3),
            model=features.MODEL, layer=resnet().layer, weights=resnet().weights,
        )  # fmt: skip
        store.save_index(tmp, index, attrs)


class Reducer(ArtifactTask):
    """StandardScaler + PCA over every descriptor of a sample of images; kept across runs until a refit."""

    filename = "reducer.h5"

    def requires(self):
        return Features(date=self.date)

    def settings(self):
        return {
            "variance": reduction().variance,
            "sample_images": reduction().sample_images,
            "seed": reduction().seed,
            "features": settings_digest(self.requires().settings()),
            "descriptors": reduction().descriptors,
            "reduced": reduction().reduced,
        }

    def complete(self):
        # frozen: valid for any later run with the same settings, until a refit is asked for
        # or the collection has grown past [codebook] refit_growth since the fit
        if not self.requires().complete():
            return False
        attrs = self.recorded()
        if attrs is None or attrs.get("settings_digest") != settings_digest(self.settings()):
            return False
        if self.refit and attrs["run_date"] != self.date.isoformat():
            return False
        images_now = read_attrs(self.input().path)["images"]
        return images_now <= attrs["images"] * (1 + codebook().refit_growth)

    def make(self, tmp):
        blocks = self.requires().blocks()
        sample = blocks.subset(sample_images(blocks.n_images, reduction().sample_images, reduction().seed))
        reducer = ReducerModel(reduction().variance, reduction().descriptors, reduction().reduced)
        reducer.fit(sample, checkpoints=self.checkpoints())
        reducer.save(tmp, self.attrs(images=len(blocks.index)))


class Codebook(ArtifactTask):
    """k-means visual words over a sample of the reduced descriptors; refitted with the reducer."""

    filename = "codebook.h5"

    def requires(self):
        return {"features": Features(date=self.date), "reducer": Reducer(date=self.date, refit=self.refit)}

    def tracked(self):
        return [self.requires()["reducer"]]

    def settings(self):
        settings = {"size": str(codebook().size), "sample_size": codebook().sample_size, "seed": codebook().seed}
        if str(codebook().size).strip().lower() == "auto":  # a new rule for auto refits the codebook
            settings["descriptors_per_word"] = DESCRIPTORS_PER_WORD
        return settings

    def make(self, tmp):
        model = fit_codebook(
            self.requires()["features"].blocks(),
            ReducerModel.load(self.input()["reducer"].path),
            size=codebook().size,
            sample_size=codebook().sample_size,
            random_state=codebook().seed,
        )
        model.save(tmp, self.attrs())


class Histograms(ArtifactTask):
    """Each image's histogram of visual words, sparse; unchanged images keep theirs."""

    filename = "histograms.h5"

    def requires(self):
        return {
            "features": Features(date=self.date),
            "reducer": Reducer(date=self.date, refit=self.refit),
            "codebook": Codebook(date=self.date, refit=self.refit),
        }

    def settings(self):
        return {"assign": histograms_config().assign}

    def previous(self):
        """The histograms of the last run, when made with the current reducer, codebook and settings."""
        attrs = self.recorded()
        if attrs is None or attrs.get("settings_digest") != settings_digest(self.settings()):
            return None
        inputs, now = json.loads(attrs["inputs"]), self.input_digests()
        if any(inputs.get(stage) != now[stage] for stage in ("Reducer", "Codebook")):
            return None
        keys, counts, _ = histograms.load_counts(self.output().path)
        return keys, counts

    def make(self, tmp):
        blocks = self.requires()["features"].blocks()
        counts, n_reused = histograms.compute_histograms(
            blocks,
            blocks.index.keys,
            ReducerModel.load(self.input()["reducer"].path),
            CodebookModel.load(self.input()["codebook"].path),
            assign=histograms_config().assign,
            previous=self.previous(),
            checkpoints=self.checkpoints(),
            progress=Progress(self, "histograms of"),
        )
        histograms.save_histograms(
            tmp, blocks.index.keys, counts, blocks.n_local(), self.attrs(reused=n_reused), histograms_config().assign
        )


class Similarities(ArtifactTask):
    """Every image's k nearest other images, keyed to database IDs: similarities.hdf5."""

    filename = "similarities.hdf5"

    def requires(self):
        return {
            "features": Features(date=self.date),
            "codebook": Codebook(date=self.date, refit=self.refit),
            "histograms": Histograms(date=self.date, refit=self.refit),
        }

    def tracked(self):
        return [self.requires()["features"], self.requires()["histograms"]]

    def settings(self):
        return {
            "k": neighbours().k, "metric": neighbours().metric, "weighting": neighbours().weighting,
            "power": neighbours().power,
        }  # fmt: skip

    def make(self, tmp):
        index = store.load_index(self.input()["features"].path)
        _, counts, n_local = histograms.load_counts(self.input()["histograms"].path)
        assign = histograms.load_assign(self.input()["histograms"].path)
        nearest, distances = nearest_neighbours(
            Counts(
                counts,
                n_local * assign,
                index.ids,
                neighbours().weighting,
                neighbours().metric,
                power=neighbours().power,
            ),  # fmt: skip
            k=neighbours().k,
            method=neighbours().method,
            checkpoints=self.checkpoints(),
            progress=Progress(self, "neighbours of"),
        )
        attrs = self.attrs(
            metric=neighbours().metric,
            weighting=neighbours().weighting,
            power=neighbours().power,
            codebook_size=CodebookModel.load(self.input()["codebook"].path).size,
            model=features.MODEL,
            layer=resnet().layer,
            weights=resnet().weights,
        )
        if resnet().weights == "random":
            attrs["weights_note"] = features.RANDOM_WEIGHTS_NOTE
        output.write_similarities(tmp, index.ids, index.ppn, index.filename, nearest, distances, attrs)


class LoadSimilarities(RunTask):
    """``luigi --module tasks LoadSimilarities --local-scheduler``: this run's similarities into ``[cms] table``.

    One transaction replaces the table's rows and writes the marker row. The load is complete
    when the last marker row for the table names this run's similarities and the table still
    holds them (:func:`pipeline.cms.holds_load`): a rerun of a loaded run does nothing, and a
    table dropped or emptied outside the pipeline is loaded again by the next run.
    """

    def requires(self):
        return Similarities(date=self.date, refit=self.refit)

    def run_id(self):
        """The identity of the similarities to load: the digest of similarities.hdf5."""
        return read_attrs(self.input().path)["digest"]

    def siblings(self):
        """The siblings mode's target, or None in table mode."""
        c = cms()
        return (c.images_table, c.id_column, c.siblings_column) if c.mode == "siblings" else None

    def target(self):
        """What the marker table calls this load's destination."""
        if cms().mode == "siblings":
            return cms_db.siblings_target(cms().images_table, cms().siblings_column)
        return cms().table

    def complete(self):
        if not self.requires().complete():
            return False
        with h5py.File(self.input().path, "r") as f:
            ids = read_ids(f["ids"])
        return cms_db.holds_load(
            database.engine(), self.run_id(), ids, cms().table, cms().marker_table, siblings=self.siblings()
        )

    def run(self):
        result = read_similarities(self.input().path)
        common = dict(run_id=self.run_id(), run_date=self.date.isoformat(), marker_table=cms().marker_table)
        if cms_db.loaded_run(database.engine(), self.target(), cms().marker_table) == common["run_id"]:
            logger.warning(
                "%s no longer holds the rows of run %s that the marker table records (dropped, emptied or restored "
                "outside the pipeline): loading them again", self.target(), common["run_id"],
            )  # fmt: skip
        if cms().mode == "siblings":
            cms_db.load_siblings(
                database.engine(), result["ids"], result["neighbours"], images_table=cms().images_table,
                id_column=cms().id_column, siblings_column=cms().siblings_column, batch_rows=cms().batch_rows,
                **common,
            )  # fmt: skip
        else:
            cms_db.load_similarities(
                database.engine(), result["ids"], result["neighbours"], result["distances"], table=cms().table,
                batch_rows=cms().batch_rows, **common,
            )  # fmt: skip


class RunCheck(RunTask):
    """A check of this run's neighbours, written to ``<artifacts>/<filename>`` (JSON) with what it
    was made from: complete while that is unchanged."""

    filename = None

    def output(self):
        return luigi.LocalTarget(os.path.join(paths().artifacts, self.filename))

    def inputs_identity(self):
        """What the check is made from (JSON-serialisable)."""
        raise NotImplementedError

    def complete(self):
        if not all(t.complete() for t in luigi.task.flatten(self.requires())):
            return False
        recorded = read_json(self.output().path)
        return recorded is not None and recorded.get("made_from") == self.inputs_identity()

    def write(self, result):
        with artifacts_writable():
            write_json(
                self.output().path, {"date": self.date.isoformat(), **result, "made_from": self.inputs_identity()}
            )


class LabelsFile(RunInput):
    """The labels the neighbours are evaluated against: ``[evaluate] labels``."""

    path = luigi.Parameter(description="The labels CSV file (id,label).")

    def output(self):
        return luigi.LocalTarget(self.path)

    def missing_message(self):
        return f"[evaluate] labels={self.path!r} does not exist; give a CSV file id,label of (some of) the collection's images"


class Evaluate(RunCheck):
    """``luigi --module tasks Evaluate --local-scheduler``: precision, recall and mAP of this run's
    neighbours against ``[evaluate] labels``, into ``<artifacts>/evaluation.json``."""

    def requires(self):
        return {
            "similarities": Similarities(date=self.date, refit=self.refit),
            "labels": LabelsFile(date=self.date, path=evaluate_config().labels),
        }

    filename = "evaluation.json"

    def inputs_identity(self):
        """What the evaluation was made from: the similarities' digest and the labels file's size and time."""
        labels = os.stat(self.input()["labels"].path)
        return {
            "similarities": read_attrs(self.input()["similarities"].path)["digest"],
            "labels": [os.path.abspath(self.input()["labels"].path), labels.st_size, labels.st_mtime_ns],
        }

    def run(self):
        result = read_similarities(self.input()["similarities"].path)
        scores = evaluation.evaluate(
            result["ids"], result["neighbours"], evaluation.read_labels(self.input()["labels"].path)
        )
        if scores["queries"] == 0:
            raise ConfigError(
                f"[evaluate] labels={evaluate_config().labels!r} gives no query: no label is shared by two images "
                "of this run; label groups of similar images"
            )
        logger.info(
            "evaluation over %d queries: precision@1 %.3f, precision@5 %.3f, recall@5 %.3f, mAP %.3f",
            scores["queries"], scores["precision_at_1"], scores["precision_at_5"], scores["recall_at_5"], scores["map"],
        )  # fmt: skip
        self.write(scores)


def latest_index():
    """The :class:`~pipeline.query.SimilarityIndex` of the artifacts the last run left."""
    stages = (Features, Reducer, Codebook, Histograms, Similarities)
    return SimilarityIndex.load(*(os.path.join(paths().artifacts, stage.filename) for stage in stages))


def query_extractor(model):
    """A DescriptorExtractor over the model a SimilarityIndex records, with this machine's decoding settings."""
    return features.DescriptorExtractor(
        features.cached_model(model["weights"], model["layer"], model["seed"]),
        batch_size=resnet().batch_size,
        decode_processes=images_config().decode_processes,
        decode_timeout=images_config().decode_timeout,
        max_pixels=images_config().max_pixels,
    )


class SelfCheck(RunCheck):
    """``luigi --module tasks SelfCheck --local-scheduler``: how often altered copies of a sample of
    the collection find their original, into ``<artifacts>/selfcheck.json``; part of every
    run unless ``[selfcheck] sample = 0``."""

    def requires(self):
        return {"inventory": Inventory(date=self.date), "similarities": Similarities(date=self.date, refit=self.refit)}

    filename = "selfcheck.json"

    def inputs_identity(self):
        """What the check was made from: the similarities' digest and the sample's settings."""
        return {
            "similarities": read_attrs(self.input()["similarities"].path)["digest"],
            "sample": selfcheck_config().sample,
            "seed": selfcheck_config().seed,
        }

    def run(self):
        index = latest_index()
        files = collection.load_inventory(self.input()["inventory"].path).paths(index.index.ids, paths().content)
        with query_extractor(index.model) as extractor, tempfile.TemporaryDirectory(prefix="selfcheck-") as copies:
            result = self_check(
                index, extractor, files, copies, sample=selfcheck_config().sample, seed=selfcheck_config().seed,
                k=min(5, len(files)),
            )  # fmt: skip
        self.write(result)
