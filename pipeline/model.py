"""ResNet50 cut at a layer: its layers' output sides (known without building it), its weights
and their identity, and the Keras model itself."""

import hashlib
import logging
import os
import re

from .errors import ConfigError, WeightsError, named
from .images import INPUT_SIZE
from .precision import POLICIES, import_quietly
from .settings import Resnet

logger = logging.getLogger(__name__)

MODEL = "ResNet50"
#: The original scripts' res5c_branch2c (Keras 3 names it conv5_block3_3_conv); docs/quality.md says why.
DEFAULT_LAYER = Resnet.layer
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
        f"{named('layer')}={layer!r} is not a layer of ResNet50; use one of the block outputs "
        f"conv2_block3_out, conv3_block4_out, conv4_block6_out, conv5_block3_out, or a convolution such as "
        f"conv5_block3_3_conv (default {DEFAULT_LAYER})"
    )


def import_keras():
    """Keras, imported on first use (TensorFlow is slow to import), quietly (:func:`import_quietly`)."""
    return import_quietly("keras")


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
            f"{named('weights')}={weights!r} cannot be read ({exc.strerror}); "
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
    precision : {"float32", "float16"}
        What the layers compute in (:mod:`pipeline.precision`; the weights are the same). bfloat16
        is this float32 model run by OpenVINO (:class:`pipeline.backends.OpenVinoBackend`).

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
    keras = import_keras()
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
                f"{named('weights')}=imagenet: the ImageNet weights could not be had ({reason}); "
                f"put {IMAGENET_FILE} into {keras_cache_dir()}, or set {named('weights')} to the path "
                "of that file (or to random for a smoke test)"
            ) from None
        raise WeightsError(
            f"{named('weights')}={weights!r} is not a ResNet50 weights file without the top ({reason}); "
            f"use Keras's {IMAGENET_FILE}"
        ) from None
    finally:
        keras.config.set_dtype_policy(before)
    if isinstance(layer, str):
        return keras.Model(base.input, base.get_layer(layer).output, name=f"resnet50_{layer}")
    return keras.Model(base.input, [base.get_layer(name).output for name in layers], name="resnet50_layers")
