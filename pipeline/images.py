"""Decoding image files into the model's input (224 x 224 x 3), each file in a time-bounded process."""

import logging
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, PipelineError

INPUT_SIZE = 224
#: Default of ``[images] max_pixels``: larger images are rejected unread, against decompression bombs.
MAX_PIXELS = 400_000_000
#: Default of ``[images] decode_timeout``: seconds one file may take to decode.
DECODE_TIMEOUT = 120.0
#: Values of ``[images] colour``: the model sees every image in grey (its luma in the three
#: channels), or in its own colours.
COLOURS = ("grey", "rgb")
#: A margin row or column of :func:`trim_box` differs from the margin's colour by more than this
#: (of 255) in at most this share of its pixels.
TRIM_TOLERANCE, TRIM_SHARE = 24, 0.02
#: :func:`trim_box` keeps at least this share of each side (a uniform photograph is not a margin).
TRIM_KEEP = 0.5
#: Seconds a new decoder process may take to start (import numpy and Pillow).
START_TIMEOUT = 120.0
#: Seconds to wait for a killed decoder process to end.
STOP_TIMEOUT = 10.0

logger = logging.getLogger(__name__)
# the pixel limit is ours (max_pixels), checked before any pixel is decoded
Image.MAX_IMAGE_PIXELS = None


def to_rgb(image):
    """An 8-bit RGB copy of a decoded frame, whatever its mode.

    - 16-bit integer (``I;16`` and ``I`` with values up to 65,535): 0..65,535 maps to 0..255;
      other 32-bit integer and floating-point images: their own minimum..maximum maps to
      0..255 (floats already in 0..1 map from 0..1);
    - transparency (``RGBA``, ``LA``, ``PA``, or a transparent colour of a palette, 1-bit,
      greyscale or RGB image): composited on white, as a page shows it;
    - CMYK, greyscale, 1-bit, palette, YCbCr, LAB: Pillow's conversion to RGB.
    """
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0 and high <= 1:
            scaled = values * 255
        elif image.mode != "F" and low >= 0 and high <= 65535:
            scaled = values / 257 if image.mode.startswith("I;16") or high > 255 else values
        else:
            scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def trim_box(image):
    """The box of a picture inside a uniform margin, as a scanned page's paper or a copy stand's
    background frames it, or None when there is no such margin.

    The margin's colour is the median of the image's outermost pixels (in grey, on a copy at most
    256 pixels wide); the margin is every outer row and column in which at most ``TRIM_SHARE`` of
    the pixels differ from it by more than ``TRIM_TOLERANCE``. Each side keeps at least
    ``TRIM_KEEP`` of its length.

    Parameters
    ----------
    image : PIL.Image.Image

    Returns
    -------
    box : (left, top, right, bottom) in pixels of ``image``, or None
    """
    small = image.convert("L")
    small.thumbnail((256, 256))
    grey = np.asarray(small, dtype=np.int16)
    h, w = grey.shape
    outer = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    differs = np.abs(grey - int(np.median(outer))) > TRIM_TOLERANCE
    rows, cols = differs.mean(axis=1) > TRIM_SHARE, differs.mean(axis=0) > TRIM_SHARE
    if not rows.any() or not cols.any():
        return None
    top, bottom = int(np.argmax(rows)), h - int(np.argmax(rows[::-1]))
    left, right = int(np.argmax(cols)), w - int(np.argmax(cols[::-1]))
    if (top, bottom, left, right) == (0, h, 0, w) or bottom - top < TRIM_KEEP * h or right - left < TRIM_KEEP * w:
        return None
    width, height = image.size
    return (left * width // w, top * height // h, -(-right * width // w), -(-bottom * height // h))


def load_image(path, size=INPUT_SIZE, max_pixels=MAX_PIXELS, colour="rgb", trim=False):
    """Decode an image file into the model's input.

    The first frame is taken (multi-page TIFF, animated GIF), the EXIF orientation is
    applied and the frame converted to RGB by :func:`to_rgb`. JPEGs are decoded at a
    reduced scale when much larger than ``size`` (Pillow's draft mode). With ``trim`` the
    uniform margin around the picture is cut off (:func:`trim_box`); with ``colour="grey"``
    the three channels are the image's luma. The image is resized to ``size`` x ``size``
    without keeping its aspect ratio, as Keras's ``load_img(target_size=...)`` does.

    Parameters
    ----------
    path : str
    size : int
    max_pixels : int
        Images with more pixels are rejected before decoding (decompression bombs).
    colour : {"grey", "rgb"}
    trim : bool

    Returns
    -------
    pixels : ndarray of shape (size, size, 3), uint8

    Raises
    ------
    ImageError
        When the file cannot be read or decoded, or is larger than ``max_pixels``.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{width} x {height} pixels is more than [images] max_pixels={max_pixels}")
            draft = round(size / TRIM_KEEP) if trim else size  # a trimmed picture still has size pixels
            image.draft("RGB", (draft, draft))  # JPEG: decode at a reduced scale when the scan is large
            image = to_rgb(ImageOps.exif_transpose(image))
            if colour == "grey":  # once, for the margin search and the model; one band to resize
                image = image.convert("L")
            box = trim_box(image) if trim else None
            if box is not None:
                image = image.crop(box)
            pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
            return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError) as exc:
        raise ImageError(reason_of(exc, path)) from None


def reason_of(exc, path):
    """The one-line reason a file could not be decoded, without the path of the file (the
    report names the file by its path below content/; the machine's folders stay private)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return exc.strerror  # "No such file or directory", "Permission denied", "Is a directory"
    return without_path(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, path)


def without_path(text, path):
    """``text`` with every mention of ``path`` (quoted or not, whole or its folder) replaced by its file name."""
    path = os.fspath(path)
    name = os.path.basename(path)
    for whole in (repr(path), f'"{path}"', path):
        text = text.replace(whole, repr(name) if whole != path else name)
    folder = os.path.dirname(path)
    return text.replace(folder + os.sep, "") if folder else text


def _serve():
    """A decoder process: decode each path received, send back (True, pixels) or (False, reason).

    Started by :class:`_Decoder` with the file descriptor of its socket as the only argument;
    the first message names the decoding function and its settings.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the parent's to handle
    connection = multiprocessing.connection.Connection(int(sys.argv[1]))
    decode, size, max_pixels, options = connection.recv()
    connection.send("ready")
    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError):  # the parent has gone
            return
        try:
            result = (True, decode(path, size=size, max_pixels=max_pixels, **options))
        except ImageError as exc:
            result = (False, without_path(str(exc), path))
        except Exception as exc:  # a decoder bug on a crafted file fails that file, not the run
            first = without_path(str(exc).splitlines()[0], path) if str(exc) else ""
            result = (False, f"decoder error {type(exc).__name__}: {first}".rstrip(": "))
        connection.send(result)


class _Decoder:
    """One decoder process (a fresh Python, nothing inherited from a parent running TensorFlow)
    and the parent's end of its socket."""

    def __init__(self, decode, size, max_pixels, options):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the same imports
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from pipeline.images import _serve; _serve()", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        self.connection = multiprocessing.connection.Connection(ours.detach())
        self.settings = (decode, size, max_pixels, options)
        self.job = None  # (position, deadline) of the file it decodes

    def wait_ready(self):
        try:
            self.connection.send(self.settings)
            if self.connection.poll(START_TIMEOUT):
                self.connection.recv()
                return
            problem = f"did not start within {START_TIMEOUT:.0f} s"
        except (EOFError, OSError):
            problem = f"ended at start ({self.death()}); its error is in the log above"
        self.stop()
        raise PipelineError(f"an image decoder process {problem}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # stuck in uninterruptible I/O (a hung network mount): let it be
            logger.warning("decoder process %d does not end; left behind", self.process.pid)
        self.connection.close()

    def death(self):
        """Why the process ended, in words."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return "not answering"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"


class DecoderPool:
    """Processes that decode image files, one file at a time each, with a time limit per file.

    A decoder that takes longer than ``timeout`` seconds on a file is killed, and one that
    dies (a crash in a native decoding library, the kernel's out-of-memory killer) is
    replaced; either way only the file it was decoding fails, with the reason, and the other
    files are decoded as if nothing had happened.

    Parameters
    ----------
    processes : int
        Files decoded at once.
    timeout : float
        Seconds one file may take to decode.
    max_pixels : int
        Images with more pixels are rejected before decoding.
    decode : callable(path, size=, max_pixels=, **options) -> ndarray
        A module-level function (the processes import it): :func:`load_image` by default.
    size : int
        Side of the decoded square.
    options : dict, optional
        More keyword arguments of ``decode`` (:func:`load_image`'s ``colour`` and ``trim``).
    """

    def __init__(
        self, processes=2, timeout=DECODE_TIMEOUT, max_pixels=MAX_PIXELS, decode=None, size=INPUT_SIZE, options=None
    ):
        self.processes = processes
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.decode = decode or load_image
        self.size = size
        self.options = dict(options or {})
        self._decoders = []

    def _start(self, n):
        started = [_Decoder(self.decode, self.size, self.max_pixels, self.options) for _ in range(n)]
        self._decoders.extend(started)
        for decoder in started:
            decoder.wait_ready()

    def _replace(self, decoder):
        decoder.stop()
        self._decoders.remove(decoder)
        self._start(1)

    def close(self):
        """Stop every decoder process."""
        for decoder in self._decoders:
            decoder.stop()
        self._decoders = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def imap(self, paths, stop=None):
        """Decode every file.

        Parameters
        ----------
        paths : sequence of str
        stop : threading.Event, optional
            When set, the iteration ends within half a second (a consumer in another thread
            has gone).

        Yields
        ------
        result : ndarray of shape (size, size, 3), uint8, or ImageError
            One per path, in the order of ``paths``.
        """
        paths = list(paths)
        if not paths:
            return
        self._start(min(self.processes, len(paths)) - len(self._decoders))
        window = 4 * self.processes  # decoded files held ahead of the consumer, at most
        results, sent, given = {}, 0, 0
        try:
            while given < len(paths) and not (stop is not None and stop.is_set()):
                for decoder in list(self._decoders):
                    if decoder.job is None and sent < min(len(paths), given + window):
                        try:
                            decoder.connection.send(str(paths[sent]))
                        except OSError:  # died while idle: its replacement takes the file
                            self._replace(decoder)
                            continue
                        decoder.job = (sent, time.monotonic() + self.timeout)
                        sent += 1
                if given in results:
                    yield results.pop(given)
                    given += 1
                else:
                    self._collect(results)
        finally:  # ended early: decoders still at work on this iteration's files are of no use
            for decoder in [d for d in self._decoders if d.job is not None]:
                decoder.stop()
                self._decoders.remove(decoder)

    def _collect(self, results):
        """Wait (briefly) for decoders to finish; record their results, kill those past their time."""
        busy = [d for d in self._decoders if d.job is not None]
        if not busy:  # a decoder was just replaced before it got a file
            return
        first_deadline = min(d.job[1] for d in busy)
        ready = multiprocessing.connection.wait(
            [d.connection for d in busy], timeout=max(0.0, min(first_deadline - time.monotonic(), 0.5))
        )
        for decoder in busy:
            position, deadline = decoder.job
            if decoder.connection in ready:
                try:
                    ok, value = decoder.connection.recv()
                except (EOFError, OSError):
                    results[position] = ImageError(f"the decoder process died on this file ({decoder.death()})")
                    self._replace(decoder)
                    continue
                results[position] = value if ok else ImageError(value)
                decoder.job = None
            elif time.monotonic() > deadline:
                results[position] = ImageError(
                    f"decoding took longer than [images] decode_timeout={self.timeout:g} s; the decoder was stopped"
                )
                self._replace(decoder)
