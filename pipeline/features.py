"""ResNet50 local descriptors: building the model and running it over batches of image files."""

import contextlib
import functools
import hashlib
import logging
import os
import queue
import re
import threading

import numpy as np

from .decoders import DecoderPool
from .errors import ConfigError, ImageError, WeightsError
from .images import COLOURS, DECODE_TIMEOUT, DEFAULT_COLOUR, DEFAULT_TRIM, INPUT_SIZE, MAX_PIXELS
from .precision import POLICIES

logger = logging.getLogger(__name__)

MODEL = "ResNet50"
#: The original scripts' res5c_branch2c (Keras 3 names it conv5_block3_3_conv); docs/quality.md says why.
DEFAULT_LAYER = "conv5_block3_3_conv"
#: Keras's file name for the ImageNet weights without the classification head.
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RANDOM_WEIGHTS_NOTE = (
    "made with random weights (weights = random): for tests and smoke runs only, "
    "not a real similarity; use weights = imagenet on a real collection"
)


#: Side of the square output of ResNet50's stem layers at 224 x 224 input.
_STEM_SIDES = {
    "conv1_pad": 230,
    "conv1_conv": 112,
    "conv1_bn": 112,
    "conv1_relu": 112,
    "pool1_pad": 114,
    "pool1_pool": 56,
}
#: Stage -> (blocks, side of its outputs).
_STAGES = {"2": (3, 56), "3": (4, 28), "4": (6, 14), "5": (3, 7)}
_BLOCK_LAYER = re.compile(r"conv([2-5])_block([1-9])_(?:(0)_(?:conv|bn)|[123]_(?:conv|bn)|[12]_relu|add|out)")


def layer_side(layer):
    """Side h = w of the output of ResNet50's layer ``layer`` at 224 x 224 input (h * w local
    descriptors per image), or None when ResNet50 has no such layer. Known without building
    the model, so that settings can be checked before any work."""
    if layer in _STEM_SIDES:
        return _STEM_SIDES[layer]
    match = _BLOCK_LAYER.fullmatch(layer)
    if match is None:
        return None
    blocks, side = _STAGES[match[1]]
    if int(match[2]) > blocks or (match[3] and match[2] != "1"):  # the shortcut convolution: first block only
        return None
    return side


def unknown_layer_message(layer):
    return (
        f"[resnet] layer={layer!r} is not a layer of ResNet50; use one of the block outputs "
        f"conv2_block3_out, conv3_block4_out, conv4_block6_out, conv5_block3_out, or a convolution such as "
        f"conv5_block3_3_conv (default {DEFAULT_LAYER})"
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


def build_model(weights="imagenet", layer=DEFAULT_LAYER, seed=0, precision="float32"):
    """Build ResNet50 cut at ``layer``, computing in ``precision``.

    Parameters
    ----------
    weights : str
        ``"imagenet"`` (Keras downloads and caches them), ``"random"`` (a seeded random
        initialisation, for tests and smoke runs only) or the path of a Keras weights file
        for ResNet50 without its classification head.
    layer : str, or tuple of str
        Name of the layer whose output gives the local descriptors; several names give a model
        with one output per layer (one forward pass for all, as the quality benchmark needs).
    seed : int
        Seed of the random initialisation when ``weights="random"``.
    precision : {"float32", "bfloat16", "float16"}
        What the layers compute in (:mod:`pipeline.precision`; the weights are the same).

    Returns
    -------
    model : keras.Model mapping (n, 224, 224, 3) caffe-preprocessed images to (n, h, w, c), or
        to a list of such arrays when ``layer`` is a tuple
    """
    layers = (layer,) if isinstance(layer, str) else tuple(layer)
    for name in layers:
        if layer_side(name) is None:
            raise ConfigError(unknown_layer_message(name))
    if precision not in POLICIES:
        raise ConfigError(f"precision={precision!r} must be one of {', '.join(POLICIES)}")
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
    before = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(POLICIES[precision])  # taken by each layer as it is made
        base = keras.applications.ResNet50(weights=source, include_top=False, input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
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
    finally:
        keras.config.set_dtype_policy(before)
    if isinstance(layer, str):
        return keras.Model(base.input, base.get_layer(layer).output, name=f"resnet50_{layer}")
    return keras.Model(base.input, [base.get_layer(name).output for name in layers], name="resnet50_layers")


def prefetch(produce, depth=1):
    """Iterate ``produce(stop)`` in a thread, up to ``depth`` items ahead of the consumer.

    ``produce`` receives a threading.Event that is set when the consumer stops early, and
    should then return soon. An exception in the producer is raised in the consumer.
    """
    items, stop, end = queue.Queue(depth), threading.Event(), object()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def fill():
        try:
            for item in produce(stop):
                put((None, item))
                if stop.is_set():
                    return
            put((None, end))
        except BaseException as exc:  # handed to the consumer, raised there
            put((exc, None))

    thread = threading.Thread(target=fill, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            error, item = items.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


@functools.lru_cache(maxsize=1)
def cached_model(weights, layer, seed, precision="float32", trunk=None):
    """:func:`build_model`, built once per process for the shards it extracts one after another;
    at ``precision="int8"``, the calibrated trunk at ``trunk`` (:func:`pipeline.int8.load_trunk`)."""
    if precision == "int8":
        from .int8 import load_trunk

        return load_trunk(trunk)
    return build_model(weights=weights, layer=layer, seed=seed, precision=precision)


class DescriptorExtractor:
    """Runs the model over image files in fixed-size batches, decoding ahead in other processes.

    Every batch is padded to ``batch_size`` so the compiled forward pass sees one shape and
    an image's descriptors do not depend on how many images share its batch. Files are
    decoded by a :class:`~pipeline.decoders.DecoderPool` (one file at a time per process, each
    within ``decode_timeout`` seconds) while the model runs on the previous batch; its
    processes start with the first run and stop at :meth:`close` (or the end of a ``with``).

    Parameters
    ----------
    model : keras.Model from :func:`build_model`, or a callable mapping decoded images to their
        maps as float32 (:class:`pipeline.int8.OpenVinoTrunk`)
    batch_size : int
    decode_processes : int, optional
        Processes decoding images while the model runs: one per core when None or 0.
    decode_timeout : float
        Seconds one file may take to decode before its decoder is stopped and the file rejected.
    max_pixels : int
        Images with more pixels are rejected before decoding.
    decode : callable, optional
        The decoding function the processes run (tests replace it); :func:`~pipeline.images.decode_image` by default.
    colour : {"grey", "rgb"}
    trim : bool
        How each image is prepared for the model (:func:`~pipeline.images.load_image`).
    """

    def __init__(
        self,
        model,
        batch_size=16,
        decode_processes=None,
        decode_timeout=DECODE_TIMEOUT,
        max_pixels=MAX_PIXELS,
        decode=None,
        colour=DEFAULT_COLOUR,
        trim=DEFAULT_TRIM,
    ):
        self.model = model
        self.batch_size = batch_size
        self.decode_processes = decode_processes
        self.decode_timeout = decode_timeout
        self.max_pixels = max_pixels
        self.decode = decode
        if colour not in COLOURS:
            raise ConfigError(f"colour={colour!r} must be one of {', '.join(COLOURS)}")
        self.options = {"colour": colour, "trim": bool(trim)}
        self._compiled = None
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def decoded_by(self):
        """Files decoded, by decoder (:attr:`pipeline.decoders.DecoderPool.decoded_by`)."""
        return dict(self._pool.decoded_by) if self._pool is not None else {}

    def close(self):
        """Stop the decoder processes."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _forward(self):
        if self._compiled is None:  # tracing costs seconds: once per extractor
            self._compiled = self._compile()
        return self._compiled

    def _compile(self):
        keras = _keras()
        model = self.model
        if not isinstance(model, keras.Model):  # runs outside TensorFlow, preprocessing included
            return model
        import tensorflow as tf

        preprocess = keras.applications.resnet50.preprocess_input

        @tf.function(reduce_retracing=True)
        def forward(pixels):
            # a mixed-precision model's maps come out in its compute dtype: float32 for the store
            return tf.nest.map_structure(
                lambda maps: tf.cast(maps, tf.float32), model(preprocess(pixels), training=False)
            )

        return forward

    def _batches(self, pool, paths, stop):
        """(start, pixels of shape (batch_size, 224, 224, 3) float32, errors) for each batch of ``paths``."""
        decoded = pool.imap(paths, stop)
        for start in range(0, len(paths), self.batch_size):
            pixels = np.zeros((self.batch_size, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
            errors = {}
            for i in range(min(self.batch_size, len(paths) - start)):
                result = next(decoded, None)
                if result is None:  # stopped early
                    return
                if isinstance(result, ImageError):
                    errors[i] = str(result)
                else:
                    pixels[i] = result
            yield start, pixels, errors

    def run(self, paths):
        """Extract the descriptors of every file, batch after batch.

        Parameters
        ----------
        paths : sequence of str

        Yields
        ------
        start : int
            Position in ``paths`` of the batch's first file.
        descriptors : ndarray of shape (n_batch, h * w, c), float32
            Rows of the files that could not be decoded are all zero. A model with several
            outputs gives a list of such arrays, one per output.
        errors : dict of int to str
            Position within the batch -> one-line reason, for the files that could not be decoded.
        """
        forward = self._forward()
        paths = list(paths)
        if self._pool is None:
            self._pool = DecoderPool(
                self.decode_processes, self.decode_timeout, self.max_pixels, self.decode, options=self.options
            )
        pool = self._pool
        with contextlib.closing(prefetch(lambda stop: self._batches(pool, paths, stop))) as batches:
            for start, pixels, errors in batches:
                n = min(self.batch_size, len(paths) - start)
                outputs = forward(pixels)
                several = isinstance(outputs, (list, tuple))
                descriptors = [self._descriptors(o, n, errors) for o in (outputs if several else [outputs])]
                yield start, descriptors if several else descriptors[0], errors

    @staticmethod
    def _descriptors(maps, n, errors):
        maps = np.asarray(maps)[:n]
        descriptors = maps.reshape(n, -1, maps.shape[-1])
        if errors:  # the runtime's own buffer may be read-only
            descriptors = descriptors.copy()
            descriptors[list(errors)] = 0
        return descriptors


def extract(extractor, paths):
    """Descriptors of image files.

    Parameters
    ----------
    extractor : DescriptorExtractor
    paths : sequence of str

    Returns
    -------
    descriptors : ndarray of shape (n_decoded, n_local, c), float32;
        a list of such arrays, one per output, for a model with several outputs
    decoded : list of int
        Positions in ``paths`` of the files decoded, in order.
    errors : dict of int to str
        Position -> one-line reason, for the files that could not be decoded.
    """
    parts, decoded, errors, several = [], [], {}, False
    for start, batch, batch_errors in extractor.run(paths):
        several = isinstance(batch, list)
        ok = [i for i in range(len(batch[0] if several else batch)) if i not in batch_errors]
        parts.append([b[ok] for b in batch] if several else [batch[ok]])
        decoded.extend(start + i for i in ok)
        errors.update({start + i: reason for i, reason in batch_errors.items()})
    if not parts:
        return np.empty((0, 0, 0), dtype=np.float32), decoded, errors
    descriptors = [np.concatenate([part[j] for part in parts]) for j in range(len(parts[0]))]
    return (descriptors if several else descriptors[0]), decoded, errors
