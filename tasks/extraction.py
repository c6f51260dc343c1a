"""The descriptors: the model's calibration where its backend needs one, the extraction shards, and the feature store's index of the run's images."""

import json
import logging
import os

import luigi

from pipeline import backends, blocks, collection, extraction, store
from pipeline.errors import ConfigError
from pipeline.h5io import create
from pipeline.model import MODEL

from . import config
from .base import ArtifactTask, Progress, RunTask, artifacts_writable, settings_digest
from .inventory import Inventory
from .shards import Shard, repairs, shard_attrs

logger = logging.getLogger("luigi-interface")


def feature_settings(spec=None):
    """The settings the descriptors depend on (the feature store's identity): those of the
    :class:`~pipeline.backends.ModelSpec` ``spec``, luigi.cfg's by default."""
    return {**(spec or config.model_spec()).identity(), "store_format": store.FORMAT}


def feature_store(settings):
    """The feature store of the descriptors made with ``settings`` (:func:`feature_settings`)."""
    return store.FeatureStore(os.path.join(config.paths().artifacts, "features", settings_digest(settings)))


def needs_calibration():
    """Whether the model's backend is calibrated per feature store (False while the settings
    cannot be read: CheckSettings names them)."""
    try:
        spec = config.model_spec()
    except ConfigError:
        return False
    return spec.backend().needs_calibration


class Calibration(RunTask):
    """The calibration of the model's backend (at ``[resnet] precision = int8``: the trunk
    quantized and calibrated on a seeded sample of ``[resnet] calibration_images`` of the
    inventory's images), once per feature store; every shard extracts with it."""

    sections = ("resnet", "images")

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
    sections = ("resnet", "images", "features", "serve")

    def outdated(self, record):
        made = os.stat(self.output().path).st_mtime_ns
        if Features(date=self.date).store().set_aside_after(made):
            return "a chunk of its images was found damaged and set aside since it extracted them"
        return None

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
            inbox=config.inbox() if config.views_made() else None,
            **decoding(),
        )
        with create(tmp) as f:
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
    sections = ("resnet", "images", "features")

    def requires(self):
        n = config.shards("features")
        return {
            "inventory": Inventory(date=self.date),
            "shards": [FeatureShard(date=self.date, shard=i, shards=n) for i in range(n)],
        }

    def made_from(self):
        return [self.requires()["inventory"]]  # the number of shards does not change the result

    def outdated(self, record):
        if self.store().set_aside_chunks():
            return "chunks of the feature store were found damaged and set aside"
        return None

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
        done, chunks = extraction.shards_done(ran)
        feature_store.clear_set_aside()  # their images are extracted again
        decision = config.precision()
        attrs = self.attrs(
            images=len(index),
            reused=len(index) + len(index.rejected) - done["extracted"],
            shards=len(shards),
            **done,
            **repairs(self, ran, chunks),
            model=MODEL,
            layer=config.resnet().layer,
            weights=config.resnet().weights,
            colour=config.images().colour,
            trim=config.images().trim,
            precision=decision.precision,
            precision_reason=decision.reason,
            precision_rates=json.dumps(decision.rates),
            store=feature_store.root,
            **config.model_spec().backend().attrs(feature_store.root),
        )
        store.save_index(tmp, index, attrs)
