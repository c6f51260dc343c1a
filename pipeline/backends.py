"""The extraction backend: what turns decoded images into descriptors, chosen once from a
:class:`ModelSpec`.

Keras runs ResNet50 at float32, bfloat16 or float16 (:mod:`pipeline.model`). OpenVINO runs the
int8 trunk (:mod:`pipeline.int8`), which is calibrated on a sample of the collection and kept in
a folder, a run's feature store: every image whose descriptors that folder holds goes through
the same trunk. Every caller (the extraction, the query, the self-check, ``compare`` and the
benchmarks) asks the spec's backend for its model; none of them branches on the precision.

Tests inject a stand-in model through :data:`BACKENDS`.
"""

import dataclasses
import functools
import logging
import os

from . import int8
from .blocks import sample_images
from .errors import ArtifactError
from .features import DescriptorExtractor
from .model import MODEL, build_model, weights_identity
from .precision import chosen_precision
from .settings import Images, Resnet

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What an image's descriptors are made with; the defaults are the shipped ones.

    Parameters
    ----------
    weights : str
        ``imagenet``, ``random`` (seeded: tests and smoke runs only) or a Keras weights file.
    layer : str, or tuple of str
        The layer whose output gives the descriptors; several give one output per layer.
    seed : int
        Seed of the random weights.
    precision : {"auto", "float32", "bfloat16", "float16", "int8"}
        ``auto`` is decided on this machine as the spec is made (:func:`pipeline.precision.choose_precision`).
    colour : {"grey", "rgb"}
    trim : bool
        How each image is prepared (:func:`pipeline.images.load_image`).
    calibration_images : int
        At int8: the images of the collection (a seeded sample) the trunk is calibrated on.
    """

    weights: str = Resnet.weights
    layer: str | tuple = Resnet.layer
    seed: int = Resnet.seed
    precision: str = Resnet.precision
    colour: str = Images.colour
    trim: bool = Images.trim
    calibration_images: int = Resnet.calibration_images

    def __post_init__(self):
        Resnet.check("precision", self.precision)
        Images.check("colour", self.colour)
        if self.precision == "auto":
            object.__setattr__(self, "precision", chosen_precision("auto")[0])

    def identity(self):
        """The settings the descriptors depend on, as a feature store records them (the weights
        by their identity, the seed only for random weights)."""
        return {
            "model": MODEL,
            "layer": self.layer,
            "weights": weights_identity(self.weights),
            "seed": self.seed if self.weights == "random" else None,
            "colour": self.colour,
            "trim": self.trim,
            **self.backend().identity(),
        }

    def backend(self):
        """The backend that computes at this precision, from :data:`BACKENDS`."""
        return BACKENDS["openvino" if self.precision == "int8" else "keras"](self)


class KerasBackend:
    """ResNet50 built by Keras, at float32 or a mixed precision; needs no calibration."""

    #: Whether the model is made per folder by :meth:`calibrate`.
    needs_calibration = False

    def __init__(self, spec):
        self.spec = spec

    def identity(self):
        # float32 stores made before the precision setting keep their identity
        return {} if self.spec.precision == "float32" else {"precision": self.spec.precision}

    def calibration(self, folder):
        """The file the backend's calibration for ``folder`` is kept in; None: it needs none."""
        return None

    def calibrate(self, folder, paths, max_pixels):
        """Make the calibration of ``folder`` from a seeded sample of the image files ``paths``,
        unless it is there."""

    def attrs(self, folder):
        """What the features' artifact records of the backend's model for ``folder``."""
        return {}

    def build(self):
        """The model, built anew (seconds): a keras.Model."""
        spec = self.spec
        return build_model(weights=spec.weights, layer=spec.layer, seed=spec.seed, precision=spec.precision)

    def model(self, folder=None):
        """The model for :class:`~pipeline.features.DescriptorExtractor`, built once per process
        for the shards it extracts one after another."""
        return _cached(type(self), self.spec, self.calibration(folder) if folder else None)


class OpenVinoInt8Backend(KerasBackend):
    """The int8 trunk of ``folder``, quantized from the float32 Keras model and calibrated on
    ``spec.calibration_images`` of the collection, run by OpenVINO on the CPU."""

    needs_calibration = True

    def identity(self):
        return {"precision": "int8", "calibration_images": self.spec.calibration_images}

    def calibration(self, folder):
        return int8.trunk_path(folder)

    def calibrate(self, folder, paths, max_pixels):
        path = self.calibration(folder)
        if os.path.exists(path):
            return
        sample = [paths[i] for i in sample_images(len(paths), self.spec.calibration_images, random_state=0)]
        pixels, n_rejected = int8.calibration_pixels(sample, max_pixels, self.spec.colour, self.spec.trim)
        logger.info("int8 calibration on %d images (%d could not be decoded)", len(pixels), n_rejected)
        float32 = dataclasses.replace(self.spec, precision="float32").backend()
        int8.calibrate(float32.build(), pixels, path)

    def attrs(self, folder):
        return {"int8_trunk": self.calibration(folder)}

    def build(self):
        raise ArtifactError("the int8 trunk is made by calibration, in a folder: ask for model(folder)")


#: The backends by name: ``keras`` for float32, bfloat16 and float16, ``openvino`` for int8.
#: Tests put a stand-in model here (a subclass whose ``build`` makes it).
BACKENDS = {"keras": KerasBackend, "openvino": OpenVinoInt8Backend}


@functools.lru_cache(maxsize=1)
def _cached(backend, spec, calibration):
    if calibration is not None:
        return int8.load_trunk(calibration)
    return backend(spec).build()


def calibrate_store(store, spec, files, content_dir, max_pixels):
    """Calibrate the backend of ``spec`` for the feature store ``store`` on a seeded sample of
    ``files`` (an inventory's), unless it needs none or has one.

    Raises
    ------
    ArtifactError
        When the store holds descriptors but its calibration is gone: a new one would give
        other descriptors, which would be mixed with the old ones.
    """
    backend = spec.backend()
    path = backend.calibration(store.root)
    if path is None or os.path.exists(path):
        return
    done, rejected = store.scan()
    if done or rejected:
        raise ArtifactError(
            f"the feature store {store.root} holds the descriptors of {len(done):,} images made by an int8 trunk "
            f"that is gone ({os.path.basename(path)}); remove that folder to calibrate again and extract every "
            "image anew"
        )
    backend.calibrate(store.root, [os.path.join(content_dir, f.relpath) for f in files], max_pixels)


def extractor(spec, folder=None, batch_size=16, **decoding):
    """A :class:`~pipeline.features.DescriptorExtractor` running the model of ``spec`` (for the
    calibration of ``folder``), preparing images as ``spec`` says; ``decoding`` holds its
    decoding settings (``decode_processes``, ``decode_timeout``, ``max_pixels``)."""
    model = spec.backend().model(folder)
    return DescriptorExtractor(model, batch_size=batch_size, colour=spec.colour, trim=spec.trim, **decoding)
