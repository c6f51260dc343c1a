"""The stages from content/ to the histograms, one Luigi task each (the neighbours: ``tasks.neighbours``)."""

import collections
import datetime
import json
import logging
import os

import h5py
import luigi

from pipeline import backends, blocks, collection, extraction, histograms, store
from pipeline.blocks import sample_images
from pipeline.codebook import DESCRIPTORS_PER_WORD, check_size, fit_codebook
from pipeline.codebook import FORMAT as CODEBOOK_FORMAT
from pipeline.codebook import Codebook as CodebookModel
from pipeline.errors import ConfigError
from pipeline.h5io import read_attrs
from pipeline.model import MODEL, layer_side
from pipeline.neighbours import check_k
from pipeline.records import check_records
from pipeline.reduction import Reducer as ReducerModel

from . import config, inputs
from .base import ArtifactTask, Progress, RunTask, artifacts_writable, requirements_complete, settings_digest

logger = logging.getLogger("luigi-interface")


class CheckSettings(RunTask):
    """The settings of luigi.cfg, checked before any work: complete when every one can work,
    failing with a one-line message naming the setting and the fix when one cannot."""

    def complete(self):
        return config.settings_problem() is None

    def run(self):
        raise ConfigError(config.settings_problem())


class Inventory(ArtifactTask):
    """The images both on disk and in the ID mapping, taken once per run date."""

    filename = "inventory.h5"

    def requires(self):
        # the paths as parameters, so a missing input is named in Luigi's summary
        mapping = (
            inputs.IdMapping(date=self.date, path=config.ids().csv)
            if config.ids().source == "csv"
            else inputs.CmsImages(date=self.date)
        )
        return {
            "settings": CheckSettings(date=self.date),
            "content": inputs.ContentFolder(date=self.date, path=config.paths().content),
            "on_disk": inputs.CollectionOnDisk(date=self.date),
            "mapping": mapping,
        }

    def settings(self):
        settings = {
            "date": self.date.isoformat(),
            "content": os.path.abspath(config.paths().content),
            "fingerprint": config.collection().fingerprint,
            "source": config.ids().source,
        }
        if config.ids().source == "cms":  # read again on every run date
            c = config.cms()
            settings["cms"] = [c.url, c.images_table, c.id_column, c.ppn_column, c.filename_column, c.ids_query]
            if c.record_column.strip():  # the digests of before without one
                settings["cms"].append(c.record_column)
            return settings
        try:
            csv = os.stat(config.ids().csv)
            csv_fingerprint = [csv.st_size, csv.st_mtime_ns]
        except OSError:  # IdMapping reports the missing file
            csv_fingerprint = None
        return {**settings, "csv": os.path.abspath(config.ids().csv), "csv_fingerprint": csv_fingerprint}

    def digest(self):
        # of the settings (the date among them) and of what was found
        return settings_digest({"settings": self.settings(), "images": self._found})

    def make(self, tmp):
        inventory = collection.take_inventory(
            config.paths().content, *inputs.read_id_mapping(), config.collection().fingerprint
        )
        # the settings that depend on the collection's size, before any image is extracted
        check_k(config.neighbours().k, len(inventory))
        k, same_record = config.neighbours().k, config.neighbours().same_record
        check_records(inventory.records, k, same_record.own(k), same_record)
        n_local = layer_side(config.resnet().layer) ** 2
        check_size(config.codebook().size, len(inventory), n_local, config.codebook().sample_size)
        self._found = inventory.fingerprint()
        previous = self.recorded() and collection.load_inventory(self.output().path)
        removed = collection.removed_images(previous, inventory) if previous else []
        if removed:
            logger.info("%d images of the previous run are gone: %s", len(removed), ", ".join(removed[:20]))
        started = datetime.datetime.fromtimestamp(self._started, datetime.UTC).isoformat(timespec="seconds")
        collection.save_inventory(
            tmp, inventory, self.attrs(images_total=len(inventory), removed=len(removed), started=started)
        )


def feature_settings(spec=None):
    """The settings the descriptors depend on (the feature store's identity): those of the
    :class:`~pipeline.backends.ModelSpec` ``spec``, luigi.cfg's by default."""
    return {**(spec or config.model_spec()).identity(), "store_format": store.FORMAT}


def feature_store(settings):
    """The feature store of the descriptors made with ``settings`` (:func:`feature_settings`)."""
    return store.FeatureStore(os.path.join(config.paths().artifacts, "features", settings_digest(settings)))


def shard_attrs(task):
    """The attributes of the artifacts of ``task``'s shards, all and those made by this run."""
    shards = [read_attrs(t.path) for t in task.input()["shards"]]
    return shards, [a for a in shards if a["run_date"] == task.date.isoformat()]


def repairs(task, ran, *more):
    """``repaired``: the warnings of ``task``'s own repair, of its shards that ran (their attributes
    ``ran``) and ``more``, in one line for the run report; empty when there were none."""
    notes = [getattr(task, "_repaired", None), *(a.get("repaired") for a in ran), *more]
    notes = [note for note in notes if note]
    return {"repaired": "; ".join(notes)} if notes else {}


class Shard:
    """One of ``shards`` parts of a sharded stage's work (its ``kind``), with its artifact
    ``<artifacts>/shards/<kind>-<shard>-of-<shards>.h5``."""

    shard = luigi.IntParameter(description="This shard, 0 .. shards - 1.")
    shards = luigi.IntParameter(description="Number of shards, [<stage>] shards.")
    kind = None

    def output(self):
        name = f"{self.kind}-{self.shard:04d}-of-{self.shards:04d}.h5"
        return luigi.LocalTarget(os.path.join(config.paths().artifacts, "shards", name), format=luigi.format.Nop)

    def of_shard(self, settings):
        """The settings of the stage, with this shard's place: each shard is an artifact of its own."""
        return {**settings, "shard": self.shard, "shards": self.shards}


def needs_calibration():
    """Whether the model's backend is calibrated per feature store (False while the settings
    cannot be read: CheckSettings names them)."""
    try:
        spec = config.model_spec()
    except (ValueError, ConfigError):
        return False
    return spec.backend().needs_calibration


class Calibration(RunTask):
    """The calibration of the model's backend (at ``[resnet] precision = int8``: the trunk
    quantized and calibrated on a seeded sample of ``[resnet] calibration_images`` of the
    inventory's images), once per feature store; every shard extracts with it."""

    def requires(self):
        return Inventory(date=self.date)

    def output(self):
        spec = config.model_spec()
        return luigi.LocalTarget(spec.backend().calibration(feature_store(feature_settings(spec)).root))

    def run(self):
        with artifacts_writable():
            calibrate(config.model_spec(), collection.load_inventory(self.input().path).files)


def calibrate(spec, files):
    """Calibrate the backend of ``spec`` for its feature store on the collection ``files``,
    unless it needs none or has one (:func:`pipeline.backends.calibrate_store`)."""
    backends.calibrate_store(
        feature_store(feature_settings(spec)), spec, files, config.paths().content, config.images().max_pixels
    )


def decoding():
    """The extraction's decoding settings on this machine (``[images]``)."""
    return {
        "decode_processes": config.images().decode_processes,
        "decode_timeout": config.images().decode_timeout,
        "max_pixels": config.images().max_pixels,
    }


class FeatureShard(Shard, ArtifactTask):
    """The descriptors of one shard of the inventory's images, extracted into the feature store.

    An image's shard is a stable hash of its path (``pipeline.extraction.shard_of``), so shards
    never reshuffle as images come and go; shards run independently, on any worker of any
    machine sharing the artifacts folder. The artifact is a small record of the shard's counts.
    """

    kind = "features"

    def complete(self):
        # a chunk set aside since this shard extracted (found damaged as it was read): extract again
        if not super().complete():
            return False
        made = os.stat(self.output().path).st_mtime_ns
        return not Features(date=self.date).store().set_aside_after(made)

    def requires(self):
        required = {"inventory": Inventory(date=self.date)}
        if needs_calibration():
            required["calibration"] = Calibration(date=self.date)
        return required

    def settings(self):
        if getattr(self, "_settings", None) is None:  # hashing a weights file once is enough
            self._settings = self.of_shard(feature_settings())
        return self._settings

    def make(self, tmp):
        files = collection.load_inventory(self.input()["inventory"].path).files
        files = [files[i] for i in extraction.in_shard([f.relpath for f in files], self.shard, self.shards)]
        done = extraction.extract_features(
            Features(date=self.date).store(),
            files,
            config.paths().content,
            config.model_spec(),
            batch_size=config.resnet().batch_size,
            progress=Progress(self, "extracted"),
            **decoding(),
        )
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                self.attrs(
                    images=len(files),
                    extracted=done.extracted,
                    reused=done.reused,
                    decoded_by=json.dumps(done.decoded_by),
                    repaired_chunks=done.repaired_chunks,
                    repaired_images=done.repaired_images,
                )
            )


class Features(ArtifactTask):
    """Where every inventory image's descriptors are in the feature store of the model,
    once every shard has extracted its images."""

    filename = "features.h5"

    def requires(self):
        n = config.shards("features")
        return {
            "inventory": Inventory(date=self.date),
            "shards": [FeatureShard(date=self.date, shard=i, shards=n) for i in range(n)],
        }

    def made_from(self):
        return [self.requires()["inventory"]]  # the number of shards does not change the result

    def complete(self):
        return super().complete() and not self.store().set_aside_chunks()

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
        shards, ran = shard_attrs(self)
        repaired = {key: sum(a.get(key, 0) for a in ran) for key in ("repaired_chunks", "repaired_images")}
        chunks = repaired["repaired_chunks"] and (
            f"{repaired['repaired_chunks']} damaged or missing feature chunks: their "
            f"{repaired['repaired_images']} images extracted again"
        )
        repaired.update(repairs(self, ran, chunks))
        feature_store.clear_set_aside()  # their images are extracted again
        extracted = sum(a["extracted"] for a in ran)
        decoded_by = collections.Counter()
        for a in ran:
            decoded_by.update(json.loads(a.get("decoded_by", "{}")))
        attrs = self.attrs(
            images=len(index),
            extracted=extracted,
            reused=len(index) + len(index.rejected) - extracted,
            shards=len(shards),
            shard_seconds=round(sum(a["seconds"] for a in ran), 3),
            decoded_by=json.dumps(decoded_by),
            model=MODEL,
            layer=config.resnet().layer,
            weights=config.resnet().weights,
            colour=config.images().colour,
            trim=config.images().trim,
            precision=config.precision()[0],
            precision_reason=config.precision()[1],
            store=feature_store.root,
            **config.model_spec().backend().attrs(feature_store.root),
            **repaired,
        )
        store.save_index(tmp, index, attrs)


class Reducer(ArtifactTask):
    """StandardScaler + PCA over every descriptor of a sample of images; kept across runs until a refit."""

    filename = "reducer.h5"
    remade = "refitted (the codebook with it); every list may change"

    def made_before(self):
        return os.path.exists(os.path.join(config.paths().artifacts, Histograms.filename))  # made from a fit

    def requires(self):
        return Features(date=self.date)

    def settings(self):
        return {
            "variance": config.reduction().variance,
            "sample_images": config.reduction().sample_images,
            "seed": config.reduction().seed,
            "features": settings_digest(self.requires().settings()),
            "descriptors": config.reduction().descriptors,
            "reduced": config.reduction().reduced,
        }

    def complete(self):
        # frozen: valid for any later run with the same settings, until a refit is asked for
        # or the collection has grown past [codebook] refit_growth since the fit
        if not requirements_complete(self):
            return False
        attrs = self.recorded()
        if attrs is None or attrs.get("settings_digest") != settings_digest(self.settings()):
            return False
        if self.refit and attrs["run_date"] != self.date.isoformat():
            return False
        images_now = read_attrs(self.input().path)["images"]
        return images_now <= attrs["images"] * (1 + config.codebook().refit_growth)

    def make(self, tmp):
        blocks = self.requires().blocks()
        sample = blocks.subset(
            sample_images(blocks.n_images, config.reduction().sample_images, config.reduction().seed)
        )
        reducer = ReducerModel(config.reduction().variance, config.reduction().descriptors, config.reduction().reduced)
        reducer.fit(sample, checkpoints=self.checkpoints())
        reducer.save(tmp, self.attrs(images=len(blocks.index)))


class Codebook(ArtifactTask):
    """k-means visual words over a sample of the reduced descriptors; refitted with the reducer."""

    filename = "codebook.h5"
    remade = "refitted; every list may change"

    def made_before(self):
        return os.path.exists(os.path.join(config.paths().artifacts, Histograms.filename))  # made from a fit

    def requires(self):
        return {"features": Features(date=self.date), "reducer": Reducer(**self.run_args())}

    def made_from(self):
        return [self.requires()["reducer"]]

    def settings(self):
        settings = {
            "size": str(config.codebook().size),
            "sample_size": config.codebook().sample_size,
            "seed": config.codebook().seed,
            "format": CODEBOOK_FORMAT,
        }
        if str(config.codebook().size).strip().lower() == "auto":  # a new rule for auto refits the codebook
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


class HistogramInputs(ArtifactTask):
    """What the histograms are made from, for Histograms and its shards."""

    def inputs(self):
        return {
            "features": Features(date=self.date),
            "reducer": Reducer(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
        }

    def made_from(self):
        return list(self.inputs().values())  # the number of shards does not change the result


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
        counts, n_reused = histograms.compute_histograms(
            blocks.subset(mine),
            index.keys[mine],
            ReducerModel.load(self.input()["reducer"].path),
            CodebookModel.load(self.input()["codebook"].path),
            assign=config.histograms().assign,
            previous=Histograms(**self.run_args()).previous(),
            checkpoints=self.checkpoints(),
            progress=Progress(self, "histograms of"),
        )
        histograms.save_histograms(
            tmp, index.keys[mine], counts, blocks.n_local(), self.attrs(reused=n_reused), config.histograms().assign
        )


class Histograms(HistogramInputs):
    """Each image's histogram of visual words, sparse, gathered from its shards."""

    filename = "histograms.h5"

    def requires(self):
        n = config.shards("histograms")
        return {**self.inputs(), "shards": [HistogramShard(**self.run_args(), shard=i, shards=n) for i in range(n)]}

    @staticmethod
    def histogram_settings():
        return {"assign": config.histograms().assign}

    def settings(self):
        return self.histogram_settings()

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
        index = store.load_index(self.input()["features"].path)
        shards = [histograms.load_counts(t.path) for t in self.input()["shards"]]
        keys, counts = histograms.gather(index.keys, [(k, c) for k, c, _ in shards])
        attrs, ran = shard_attrs(self)
        attrs = self.attrs(
            reused=sum(a["reused"] for a in attrs),
            shards=len(attrs),
            shard_seconds=round(sum(a["seconds"] for a in ran), 3),
            **repairs(self, ran),
        )
        histograms.save_histograms(tmp, keys, counts, shards[0][2], attrs, config.histograms().assign)
