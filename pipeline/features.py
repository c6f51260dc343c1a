"""ResNet50 local descriptors: building the model and running it over batches of image files."""

import concurrent.futures
import hashlib
import logging
import os

import numpy as np

from .errors import ConfigError, ImageError, WeightsError
from .images import INPUT_SIZE, MAX_PIXELS, load_image

logger = logging.getLogger(__name__)

MODEL = "ResNet50"
DEFAULT_LAYER = "conv5_block3_out"
#: Keras's file name for the ImageNet weights without the classification head.
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RANDOM_WEIGHTS_NOTE = (
    "made with random weights (weights = random): for tests and smoke runs only, "
    "not a real similarity; use weights = imagenet on a real collection"
)


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import keras

    return keras


def keras_cache_dir():
    """The folder where Keras keeps downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models")


def weights_identity(weights):
    """A string that changes whenever the weights change: the setting, or a file's SHA-256."""
    if weights in ("imagenet", "random"):
        return weights
    try:
        digest = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise WeightsError(
            f"[resnet] weights={weights!r} cannot be read ({exc.strerror}); "
            "give the path of a readable Keras weights file, or imagenet or random"
        ) from None
    return f"sha256:{digest.hexdigest()}"


def build_model(weights="imagenet", layer=DEFAULT_LAYER, seed=0):
    """Build ResNet50 cut at ``layer``.

    Parameters
    ----------
    weights : str
        ``"imagenet"`` (Keras downloads and caches them), ``"random"`` (a seeded random
        initialisation, for tests and smoke runs only) or the path of a Keras weights file
        for ResNet50 without its classification head.
    layer : str
        Name of the layer whose output gives the local descriptors.
    seed : int
        Seed of the random initialisation when ``weights="random"``.

    Returns
    -------
    model : keras.Model mapping (n, 224, 224, 3) caffe-preprocessed images to (n, h, w, c)
    """
    keras = _keras()
    if weights == "random":
        logger.warning("ResNet50 with seeded random weights (seed %d): results are %s", seed, RANDOM_WEIGHTS_NOTE)
        keras.utils.set_random_seed(seed)
        source = None
    elif weights == "imagenet":
        source = "imagenet"
    else:
        weights_identity(weights)  # a readable file, or a one-line error
        source = weights
    try:
        base = keras.applications.ResNet50(
            weights=source, include_top=False, input_shape=(INPUT_SIZE, INPUT_SIZE, 3)
        )
    except Exception as exc:  # Keras raises a bare Exception when the download fails
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if weights == "imagenet":
            raise WeightsError(
                f"[resnet] weights=imagenet: the ImageNet weights could not be had ({reason}); "
                f"put {IMAGENET_FILE} into {keras_cache_dir()}, or set [resnet] weights to the path "
                "of that file (or to random for a smoke test)"
            ) from None
        raise WeightsError(
            f"[resnet] weights={weights!r} is not a ResNet50 weights file without the top ({reason}); "
            f"use Keras's {IMAGENET_FILE}"
        ) from None
    try:
        output = base.get_layer(layer).output
    except ValueError:
        stages = [x.name for x in base.layers if x.name.endswith("_out")]
        raise ConfigError(
            f"[resnet] layer={layer!r} is not a layer of ResNet50; use one of the block outputs "
            f"{', '.join(stages[-4:])} (default {DEFAULT_LAYER})"
        ) from None
    return keras.Model(base.input, output, name=f"resnet50_{layer}")


class DescriptorExtractor:
    """Runs the model over image files in fixed-size batches, decoding ahead in threads.

    Every batch is padded to ``batch_size`` so the compiled forward pass sees one shape and
    an image's descriptors do not depend on how many images share its batch.

    Parameters
    ----------
    model : keras.Model from :func:`build_model`
    batch_size : int
    decode_threads : int
        Threads decoding images while the model runs on the previous batch.
    max_pixels : int
        Images with more pixels are rejected before decoding.
    """

    def __init__(self, model, batch_size=16, decode_threads=2, max_pixels=MAX_PIXELS):
        self.model = model
        self.batch_size = batch_size
        self.decode_threads = decode_threads
        self.max_pixels = max_pixels
        self._compiled = None

    def _forward(self):
        if self._compiled is None:  # tracing costs seconds: once per extractor
            self._compiled = self._compile()
        return self._compiled

    def _compile(self):
        import tensorflow as tf

        preprocess = _keras().applications.resnet50.preprocess_input
        model = self.model

        @tf.function(reduce_retracing=True)
        def forward(pixels):
            return model(preprocess(pixels), training=False)

        return forward

    def run(self, paths):
        """Extract the descriptors of every file, batch after batch.

        Parameters
        ----------
        paths : sequence of str

        Yields
        ------
        start : int
            Position in ``paths`` of the batch's first file.
        descriptors : ndarray of shape (n_batch, h * w, c), float16
            Rows of the files that could not be decoded are all zero.
        errors : dict of int to str
            Position within the batch -> one-line reason, for the files that could not be decoded.
        """
        forward = self._forward()
        starts = range(0, len(paths), self.batch_size)
        with concurrent.futures.ThreadPoolExecutor(self.decode_threads) as pool:
            pending = None
            for start in [*starts, None]:
                ahead = None if start is None else [pool.submit(load_image, p, max_pixels=self.max_pixels) for p in paths[start : start + self.batch_size]]
                if pending is not None:
                    yield self._finish(forward, *pending)
                pending = None if start is None else (start, ahead)

    def _finish(self, forward, start, futures):
        pixels = np.zeros((self.batch_size, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        errors = {}
        for i, future in enumerate(futures):
            try:
                pixels[i] = future.result()
            except ImageError as exc:
                errors[i] = str(exc)
        maps = forward(pixels).numpy()[: len(futures)]
        descriptors = maps.reshape(len(futures), -1, maps.shape[-1]).astype(np.float16)
        descriptors[list(errors)] = 0
        return start, descriptors, errors
