"""OpenVINO's CPU runtime: the int8 trunk (ResNet50 quantized after training by NNCF, calibrated
on a sample of the collection's own images), and the float32 model run in bfloat16.

The calibrated trunk is saved once (``int8-trunk.xml`` and ``.bin``) in the feature store it
extracts for: the calibration sample is part of what the descriptors are, so every image of
a store goes through the same trunk, and a store whose trunk is gone is not extended by
another one. :class:`pipeline.backends.OpenVinoInt8Backend` calibrates and runs it.
"""

import logging
import os
import shutil
import warnings

import numpy as np

from . import model as model_
from .errors import ArtifactError, ImageError
from .h5io import remove_stale_temporaries
from .images import INPUT_SIZE, load_image
from .settings import Resnet

logger = logging.getLogger(__name__)

#: The calibrated trunk's file in its feature store (the weights are in the .bin beside it).
TRUNK_FILE = "int8-trunk.xml"
#: Images of the collection (a seeded sample) a trunk is calibrated on, by default.
CALIBRATION_IMAGES = Resnet.calibration_images
#: Images decoded per calibration batch.
CALIBRATION_BATCH = 16


def _decline_telemetry():
    """OpenVINO's converter and NNCF send usage statistics unless the site has declined them;
    record the decline (``~/intel/openvino_telemetry``) unless the site has decided either way."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no telemetry package, no telemetry
        return
    checker = OptInChecker()
    try:
        if checker.consent_file_base_dir() and not os.path.exists(checker.consent_file()):
            if checker.create_or_check_consent_dir():
                checker.update_result(ConsentCheckResult.DECLINED)
    except OSError:
        pass


def _openvino():
    _decline_telemetry()
    import openvino

    return openvino


def trunk_path(store_root):
    """The calibrated trunk of the feature store at ``store_root``."""
    return os.path.join(store_root, TRUNK_FILE)


def calibration_pixels(paths, max_pixels, colour, trim):
    """The model's input for the decodable ones of ``paths``, and the number that were not.

    Returns
    -------
    pixels : ndarray of shape (n, 224, 224, 3), float32
    rejected : int
    """
    decoded, rejected = [], 0
    for path in paths:
        try:
            decoded.append(load_image(path, max_pixels=max_pixels, colour=colour, trim=trim))
        except ImageError as exc:
            logger.info("calibration: %s", exc)
            rejected += 1
    return np.asarray(decoded, dtype=np.float32).reshape(-1, INPUT_SIZE, INPUT_SIZE, 3), rejected


def convert(model):
    """The Keras model as OpenVINO's model, any batch size (the weights as they are)."""
    ov = _openvino()
    with warnings.catch_warnings():  # Keras's note on how the converter passes the input
        warnings.filterwarnings("ignore", message="The structure of `inputs`", category=UserWarning)
        return ov.convert_model(model, input=[(-1, INPUT_SIZE, INPUT_SIZE, 3)])


def calibrate(model, pixels, path):
    """Quantize ``model`` to int8, calibrated on ``pixels``, and save it at ``path``.

    Parameters
    ----------
    model : keras.Model from :func:`pipeline.model.build_model` at float32
    pixels : ndarray of shape (n, 224, 224, 3), float32
        The decoded calibration images (:func:`calibration_pixels`), before preprocessing.
    path : str
        The .xml file to write (its weights go to the .bin beside it); written whole or not at all.
    """
    if len(pixels) == 0:
        raise ArtifactError("int8 calibration: none of the sampled images could be decoded")
    ov = _openvino()
    import nncf

    preprocess = model_.import_keras().applications.resnet50.preprocess_input
    batches = [preprocess(pixels[i : i + CALIBRATION_BATCH].copy()) for i in range(0, len(pixels), CALIBRATION_BATCH)]
    quantized = nncf.quantize(convert(model), nncf.Dataset(batches), subset_size=len(pixels))
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    remove_stale_temporaries(path)  # what a killed calibration left
    scratch = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # a folder of h5io's temporary names
    os.makedirs(scratch, exist_ok=True)
    try:
        tmp = os.path.join(scratch, name)
        ov.save_model(quantized, tmp, compress_to_fp16=False)
        # the .bin first: the .xml in place means the trunk is whole
        os.replace(tmp[: -len(".xml")] + ".bin", path[: -len(".xml")] + ".bin")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_trunk(path):
    """The calibrated trunk saved at ``path`` by :func:`calibrate`, ready to run."""
    if not os.path.exists(path):
        raise ArtifactError(f"the int8 trunk {path} is missing; run the pipeline to calibrate it")
    return OpenVinoTrunk(_openvino().Core().read_model(path))


#: OpenVINO's inference precision of each precision the pipeline runs in OpenVINO.
INFERENCE_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}


class OpenVinoTrunk:
    """An OpenVINO model (a calibrated trunk, :func:`load_trunk`, or :func:`convert`'s) run on the
    CPU: called with a batch of decoded images (n, 224, 224, 3) float32, it gives their maps
    (n, h, w, c) as float32 (a list of them, one per output, for a model of several layers).

    One compiled model per batch shape. What the model keeps in floating point computes in
    ``precision``: float32 unless asked (OpenVINO would otherwise pick bfloat16 where the CPU
    has it); at bfloat16 the weights are converted once, as the model is compiled, and the
    convolutions run on the CPU's bfloat16 units (AMX, AVX512_BF16).
    """

    def __init__(self, model, precision="float32"):
        self._model = model
        self._hint = INFERENCE_PRECISIONS[precision]
        self._compiled = {}
        self._preprocess = model_.import_keras().applications.resnet50.preprocess_input

    def __call__(self, pixels):
        shape = tuple(pixels.shape)
        if shape not in self._compiled:
            ov = _openvino()
            model = self._model.clone()
            model.reshape(list(shape))
            self._compiled[shape] = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": self._hint})
        compiled = self._compiled[shape]
        result = compiled(self._preprocess(np.array(pixels, dtype=np.float32)))
        maps = [result[output] for output in compiled.outputs]
        return maps if len(maps) > 1 else maps[0]
