"""ResNet50 local descriptors: the model of a run (its backend's, :mod:`pipeline.backends`) run
over batches of image files."""

import contextlib
import logging
import queue
import threading

import numpy as np

from .decoders import DecoderPool
from .errors import ImageError
from .images import DECODE_TIMEOUT, DEFAULT_COLOUR, DEFAULT_TRIM, INPUT_SIZE, MAX_PIXELS
from .model import import_keras
from .precision import cpu_flags
from .settings import Images

logger = logging.getLogger(__name__)


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


class DescriptorExtractor:
    """Runs the model over image files in fixed-size batches, decoding ahead in other processes.

    Every batch is padded to ``batch_size`` so the compiled forward pass sees one shape and
    an image's descriptors do not depend on how many images share its batch. Files are
    decoded by a :class:`~pipeline.decoders.DecoderPool` (one file at a time per process, each
    within ``decode_timeout`` seconds) while the model runs on the previous batch; its
    processes start with the first run and stop at :meth:`close` (or the end of a ``with``).

    Parameters
    ----------
    model : keras.Model from :func:`~pipeline.model.build_model`, or a callable mapping decoded images
        to their maps as float32 (:class:`pipeline.int8.OpenVinoTrunk`): a backend's model
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
    views : bool
        Make each image's thumbnail and preview as well, from the copy decoded for the model
        (:func:`~pipeline.images.make_views`).
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
        views=False,
    ):
        self.model = model
        self.batch_size = batch_size
        self.decode_processes = decode_processes
        self.decode_timeout = decode_timeout
        self.max_pixels = max_pixels
        self.decode = decode
        Images.check("colour", colour)
        self.options = {"colour": colour, "trim": bool(trim), **({"views": True} if views else {})}
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
        keras = import_keras()
        model = self.model
        if not isinstance(model, keras.Model):  # runs outside TensorFlow, preprocessing included
            return model
        import tensorflow as tf

        preprocess = keras.applications.resnet50.preprocess_input
        # oneDNN's AVX2 kernels sum the rows at the end of a batch in another order than the others:
        # a spare last image keeps each image's descriptors independent of the images beside it
        spare = 1 if "avx512f" not in cpu_flags() else 0

        @tf.function(reduce_retracing=True)
        def forward(pixels):
            if spare:
                pixels = tf.concat([pixels, tf.zeros_like(pixels[:spare])], axis=0)
            # a mixed-precision model's maps come out in its compute dtype: float32 for the store
            return tf.nest.map_structure(
                lambda maps: tf.cast(maps[: tf.shape(maps)[0] - spare], tf.float32),
                model(preprocess(pixels), training=False),
            )

        return forward

    def _batches(self, pool, paths, stop):
        """(start, pixels of shape (batch_size, 224, 224, 3) float32, errors, views) for each batch of ``paths``."""
        decoded = pool.imap(paths, stop)
        for start in range(0, len(paths), self.batch_size):
            pixels = np.zeros((self.batch_size, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
            errors, views = {}, {}
            for i in range(min(self.batch_size, len(paths) - start)):
                result = next(decoded, None)
                if result is None:  # stopped early
                    return
                if isinstance(result, ImageError):
                    errors[i] = str(result)
                else:
                    pixels[i] = result.pixels
                    if result.views is not None:
                        views[i] = result.views
            yield start, pixels, errors, views

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
        views : dict of int to (bytes, bytes)
            Position within the batch -> thumbnail and preview, with ``views`` (else empty).
        """
        forward = self._forward()
        paths = list(paths)
        if self._pool is None:
            self._pool = DecoderPool(
                self.decode_processes, self.decode_timeout, self.max_pixels, self.decode, options=self.options
            )
        pool = self._pool
        with contextlib.closing(prefetch(lambda stop: self._batches(pool, paths, stop))) as batches:
            for start, pixels, errors, views in batches:
                n = min(self.batch_size, len(paths) - start)
                outputs = forward(pixels)
                several = isinstance(outputs, (list, tuple))
                descriptors = [self._descriptors(o, n, errors) for o in (outputs if several else [outputs])]
                yield start, descriptors if several else descriptors[0], errors, views

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
    for start, batch, batch_errors, _ in extractor.run(paths):
        several = isinstance(batch, list)
        ok = [i for i in range(len(batch[0] if several else batch)) if i not in batch_errors]
        parts.append([b[ok] for b in batch] if several else [batch[ok]])
        decoded.extend(start + i for i in ok)
        errors.update({start + i: reason for i, reason in batch_errors.items()})
    if not parts:
        return np.empty((0, 0, 0), dtype=np.float32), decoded, errors
    descriptors = [np.concatenate([part[j] for part in parts]) for j in range(len(parts[0]))]
    return (descriptors if several else descriptors[0]), decoded, errors
