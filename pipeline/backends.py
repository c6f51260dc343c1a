"""The extraction backend: what turns decoded images into descriptors, chosen once from a
:class:`ModelSpec`.

Keras runs ResNet50 at float32 or float16 (:mod:`pipeline.model`). OpenVINO runs the float32
model at float32 or in bfloat16, and the int8 trunk (:mod:`pipeline.int8`), which is calibrated on a sample of
the collection and kept in a folder, a run's feature store: every image whose descriptors that
folder holds goes through the same trunk. Every caller (the extraction, the query, the
self-check, ``compare`` and the benchmarks) asks the spec's backend for its model; none of them
branches on the precision. ``auto`` is decided by measurement (:func:`decide_precision`).

Tests inject a stand-in model through :data:`BACKENDS`.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import socket
import time

import numpy as np

from . import int8
from .blocks import sample_images
from .errors import ArtifactError, named
from .features import DescriptorExtractor
from .images import INPUT_SIZE
from .model import MODEL, build_model, weights_identity
from .precision import Decision, candidates, decide, stated
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
    precision : {"auto", "float32", "float32-openvino", "bfloat16", "float16", "int8"}
        ``auto`` is decided by measurement on this machine when the backend is first asked for
        (:func:`decide_precision`; a run decides it once for every worker and passes the result).
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

    def model_identity(self):
        """The settings the descriptors depend on but the precision (the weights by their
        identity, the seed only for random weights)."""
        return {
            "model": MODEL,
            "layer": self.layer,
            "weights": weights_identity(self.weights),
            "seed": self.seed if self.weights == "random" else None,
            "colour": self.colour,
            "trim": self.trim,
        }

    def identity(self):
        """The settings the descriptors depend on, as a feature store records them."""
        return {**self.model_identity(), **self.backend().identity()}

    def decided(self):
        """This spec with ``auto`` decided on this machine (:func:`decide_precision`, once per process)."""
        if self.precision != "auto":
            return self
        return dataclasses.replace(self, precision=decide_precision(self).precision)

    def backend(self):
        """The backend that computes at this precision, from :data:`BACKENDS`."""
        spec = self.decided()
        return BACKENDS[RUNS_ON.get(spec.precision, "keras")](spec)


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


class OpenVinoBackend(KerasBackend):
    """The float32 Keras model converted once and run by OpenVINO on the CPU, at float32 (its
    own kernels, 1.4 to 1.7 times Keras's pace on the CPUs measured) or in bfloat16 (the weights
    converted as it is compiled, the convolutions on the CPU's bfloat16 units: AMX,
    AVX512_BF16); needs no calibration."""

    def computes(self):
        """The precision OpenVINO computes in: float32 for ``float32-openvino``."""
        return self.spec.precision.removesuffix("-openvino")

    def identity(self):
        return {"precision": self.computes(), "runtime": "openvino"}

    def build(self):
        float32 = dataclasses.replace(self.spec, precision="float32").backend().build()
        return int8.OpenVinoTrunk(int8.convert(float32), self.computes())


#: The backends by name: ``keras`` for float32 and float16, ``openvino`` for float32-openvino
#: and bfloat16, ``openvino-int8``. Tests put a stand-in model here (a subclass whose ``build``
#: makes it; the OpenVINO backends convert what ``keras`` builds).
BACKENDS = {"keras": KerasBackend, "openvino": OpenVinoBackend, "openvino-int8": OpenVinoInt8Backend}
#: The backend of each precision (``keras`` for the others).
RUNS_ON = {"float32-openvino": "openvino", "bfloat16": "openvino", "int8": "openvino-int8"}
#: Seconds ``auto`` runs each candidate precision, in rounds taken in turn (the machine is shared).
MEASURE_SECONDS, MEASURE_ROUNDS = 3.0, 3


def measure_precisions(spec, names, batch_size=16, seconds=MEASURE_SECONDS, rounds=MEASURE_ROUNDS):
    """Images per second of ``spec``'s model at each precision of ``names``: its forward pass on a
    batch of ``batch_size`` seeded noise images, after a warm-up, in ``rounds`` rounds taken in
    turn (the median round is the figure).

    Returns
    -------
    rates : dict of str to float
    """
    pixels = np.random.default_rng(0).uniform(0, 255, (batch_size, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
    forwards = {}
    for name in names:
        model = dataclasses.replace(spec, precision=name).backend().build()
        forwards[name] = DescriptorExtractor(model, batch_size)._forward()
        np.asarray(forwards[name](pixels))  # traced, compiled
    measured = {name: [] for name in names}
    for _ in range(rounds):
        for name, forward in forwards.items():
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / rounds:
                np.asarray(forward(pixels))
                done += batch_size
            measured[name].append(done / (time.perf_counter() - started))
    return {name: round(float(np.median(rates)), 1) for name, rates in measured.items()}


def record_name(spec):
    """The file name of ``auto``'s decision for the descriptors of ``spec`` (whatever its precision)."""
    # the weights by their setting, not their file's digest: their values do not change the speed
    fields = {"model": MODEL, "layer": spec.layer, "weights": spec.weights, "colour": spec.colour, "trim": spec.trim}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"precision-{digest}.json"


@functools.cache
def decide_precision(spec, record=None, batch_size=16):
    """The precision ``spec`` computes in on this machine, and why.

    A set precision is taken as it is (:func:`pipeline.precision.stated`). ``auto`` runs each
    candidate of this machine (:func:`pipeline.precision.candidates`) for a few seconds and keeps
    the fastest (:func:`pipeline.precision.decide`). With ``record`` (a JSON file), the first
    decision is kept there and every later one reads it, on any machine: the workers of a run,
    and the nights after, compute in the precision the first one chose. Decided once per process.

    Returns
    -------
    decision : pipeline.precision.Decision
    """
    if spec.precision != "auto":
        return stated(spec.precision)
    kept = _read_decision(record) if record else None
    if kept is not None:
        return kept
    names = candidates()
    logger.info("%s = auto: measuring %s on this machine", named("precision"), ", ".join(names))
    decision = decide(measure_precisions(spec, names, batch_size))
    if record:
        decision = _keep_decision(record, decision)
    return decision


def _read_decision(record):
    """The decision kept at ``record``, or None where there is none (or it is unreadable: then
    it is measured and kept again)."""
    try:
        with open(record) as f:
            kept = json.load(f)
        decision = Decision(kept["precision"], kept["reason"], kept["rates"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning(
            "%s = auto: the decision kept in %s cannot be read (%s); deciding again", named("precision"), record, exc
        )
        return None
    if decision.rates is None or decision.rates.get("float32") is None:
        return decision
    where = f"{kept.get('host', 'a machine')}, {kept.get('decided', 'an earlier day')}"
    return decision._replace(reason=f"{decision.reason}; measured on {where}, kept in {os.path.basename(record)}")


def _keep_decision(record, decision):
    """Keep ``decision`` at ``record`` unless another worker kept one first (then that one is the
    decision); a kept record that cannot be read is replaced."""
    folder = os.path.dirname(record) or "."
    tmp = os.path.join(folder, f".{os.path.basename(record)}.{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "w") as f:
            kept = {**decision._asdict(), "host": socket.gethostname(), "decided": time.strftime("%Y-%m-%d %H:%M:%S")}
            json.dump(kept, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(record) and _read_decision(record) is None:
            os.replace(tmp, record)  # unreadable: ours in its place
        else:
            os.link(tmp, record)  # fails where another worker kept its decision first
    except FileExistsError:
        return _read_decision(record) or decision
    except OSError as exc:  # a read-only artifacts folder: this process keeps its own decision
        logger.warning("%s = auto: the decision cannot be kept in %s (%s)", named("precision"), record, exc)
        return decision
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("%s = %s (%s), kept in %s", named("precision"), decision.precision, decision.reason, record)
    return decision


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
