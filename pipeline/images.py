"""Decoding image files into the model's input (224 x 224 x 3): a reduced copy made while the
file is read, its margin trimmed, resized.

Pillow reads each file's header first (its format; its size against ``max_pixels`` before any
pixel is decoded); the pixels come from the decoder measured fastest for the format, each
making a copy whose shorter side is about :func:`reduced_side` (:attr:`Decoded.decoder` names
it: ``Pillow draft``, ``Pillow levels``, ``libvips``, ``Pillow``, ``Pillow after libvips``), so
that no file is held at full resolution but those Pillow decodes whole. The same copy gives
the image's thumbnail and preview (:func:`make_views`)."""

import io
import logging
import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, named
from .settings import Images

INPUT_SIZE = 224
#: Default of ``[images] max_pixels``: larger images are rejected unread, against decompression bombs.
MAX_PIXELS = Images.max_pixels
#: Default of ``[images] decode_timeout``: seconds one file may take to decode.
DECODE_TIMEOUT = Images.decode_timeout
#: Values of ``[images] colour``: the model sees every image in grey (its luma in the three
#: channels), or in its own colours.
#: The shipped ``[images] colour`` and ``trim`` (docs/quality.md says why).
DEFAULT_COLOUR, DEFAULT_TRIM = Images.colour, Images.trim
#: A margin row or column of :func:`trim_box` differs from the margin's colour by more than this
#: (of 255) in at most this share of its pixels.
TRIM_TOLERANCE, TRIM_SHARE = 24, 0.02
#: :func:`trim_box` keeps at least this share of each side (a uniform photograph is not a margin).
TRIM_KEEP = 0.5
#: With ``trim``, the reduced copy's shorter side is at least this many times the input size, so
#: that a picture inside a margin of up to a tenth of each side is still resized down to the
#: model's input (a wider margin is resized up from what is left).
TRIM_SPARE = 1.25
#: libvips decodes a TIFF whose full-resolution pixels (8 bits each) would take more than this
#: many bytes (about 11 megapixels in RGB, 33 in grey): below, Pillow's whole decode is faster.
VIPS_TIFF_BYTES = 32 * 2**20
#: The decoder of a file libvips could not read, or whose pixels are not 8- or 16-bit integers.
FALLBACK = "Pillow after libvips"
#: Pillow modes its ``reduce`` takes (the others are converted by :func:`to_rgb` first).
REDUCIBLE = ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F", "La", "RGBa")

#: Longest side of a thumbnail and of a preview, in pixels (at most; a smaller image keeps its size).
THUMBNAIL, PREVIEW = 200, 640
#: JPEG quality of both.
QUALITY = 82
#: What decoders raise on a file they cannot decode.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError)

# the pixel limit is ours (max_pixels), checked before any pixel is decoded
Image.MAX_IMAGE_PIXELS = None


class Decoded(NamedTuple):
    """A decoded file: the model's input, the decoder that read it (the module's docstring
    lists them), and its thumbnail and preview when asked for (:mod:`pipeline.thumbnails`)."""

    pixels: np.ndarray
    decoder: str
    views: tuple = None


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
    256 pixels wide, each of its pixels the mean of a square of the image's); the margin is every
    outer row and column in which at most ``TRIM_SHARE`` of the pixels differ from it by more
    than ``TRIM_TOLERANCE``. Each side keeps at least ``TRIM_KEEP`` of its length.

    Parameters
    ----------
    image : PIL.Image.Image

    Returns
    -------
    box : (left, top, right, bottom) in pixels of ``image``, or None
    """
    small = image.convert("L")
    small = small.reduce(max(1, math.ceil(max(small.size) / 256)))
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
    return (
        left * width // w,
        top * height // h,
        min(width, -(-right * width // w)),
        min(height, -(-bottom * height // h)),
    )


def reduced_side(size=INPUT_SIZE, trim=DEFAULT_TRIM):
    """The shorter side, in pixels, that a file's reduced copy has at least (when the file has it)."""
    return math.ceil(size * TRIM_SPARE) if trim else size


def decode_image(path, size=INPUT_SIZE, max_pixels=MAX_PIXELS, colour=DEFAULT_COLOUR, trim=DEFAULT_TRIM, views=False):
    """Decode an image file into the model's input, and say how.

    The first frame is taken (multi-page TIFF, animated GIF), the EXIF orientation is applied
    and the frame converted to RGB by :func:`to_rgb`, on a copy reduced while the file is read
    (the module's docstring names each format's decoder). With ``trim`` the uniform margin
    around the picture is cut off (:func:`trim_box`); with ``colour="grey"`` the three channels
    are the image's luma. The picture is resized to ``size`` x ``size`` without keeping its
    aspect ratio, as Keras's ``load_img(target_size=...)`` does.

    Parameters
    ----------
    path : str
    size : int
    max_pixels : int
        Images with more pixels are rejected before decoding (decompression bombs).
    colour : {"grey", "rgb"}
    trim : bool
    views : bool
        Make the image's thumbnail and preview too, in colour, from the same reduced copy
        (:func:`pipeline.thumbnails.make_views`; a colour JPEG is then read once, in YCbCr: its luma is
    the grey copy bit for bit, and its colours make the views).

    Returns
    -------
    decoded : Decoded
        ``pixels`` of shape (size, size, 3), uint8.

    Raises
    ------
    ImageError
        When the file cannot be read or decoded, or is larger than ``max_pixels``.
    """
    try:
        side = reduced_side(size, trim)
        image, decoder = reduced_copy(path, side, max_pixels, grey=colour == "grey", colour_too=views)
        if image.mode == "YCbCr":  # a colour JPEG, read once for its grey and its views
            seen, image = make_views(image), image.getchannel(0)
        else:
            seen = _views(path, image, side, max_pixels) if views else None
        if colour == "grey":
            image = image.convert("L")
        box = trim_box(image) if trim else None
        pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
        return Decoded(np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels, decoder, seen)
    except DECODE_ERRORS as exc:
        raise ImageError(reason_of(exc, path)) from None


def _views(path, image, side, max_pixels):
    """The views of the file at ``path`` from its reduced copy ``image``, which is grey only where
    the file is, or where a colour JPEG was read in grey (then read again in colour)."""
    if image.mode == "L":
        with Image.open(path) as header:
            colour = header.mode not in ("1", "L", "LA", "I", "I;16", "F")
        if colour:
            image = reduced_copy(path, side, max_pixels)[0]
    return make_views(image)


def _fit(image, side):
    """``image`` reduced by a whole factor (each pixel the mean of a square) so that its longest side is at most ``side``."""
    factor = math.ceil(max(image.size) / side)
    return image.reduce(factor) if factor > 1 else image


def _jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def make_views(image):
    """The thumbnail and the preview of an upright decoded image, as JPEG bytes.

    Parameters
    ----------
    image : PIL.Image.Image
        RGB, L or YCbCr (a JPEG's own colours, encoded as they are); any other mode is
        converted to RGB.

    Returns
    -------
    views : tuple of (bytes, bytes)
        Thumbnail (longest side at most THUMBNAIL) and preview (at most PREVIEW).
    """
    if image.mode not in ("RGB", "L", "YCbCr"):
        image = image.convert("RGB")
    preview = _fit(image, PREVIEW)
    return _jpeg(_fit(preview, THUMBNAIL)), _jpeg(preview)


def decode_views(path, size=None, max_pixels=MAX_PIXELS, side=None):
    """The views of an image file alone (a decoder process's function for the images that have
    none): a Decoded without pixels, whose ``views`` are :func:`make_views`'s.

    Raises
    ------
    ImageError
        When the file cannot be read or decoded, or is larger than ``max_pixels``.
    """
    try:
        image, decoder = reduced_copy(path, side or reduced_side(), max_pixels)
        return Decoded(None, decoder, make_views(image))
    except DECODE_ERRORS as exc:
        raise ImageError(reason_of(exc, path)) from None


def load_image(path, size=INPUT_SIZE, max_pixels=MAX_PIXELS, colour=DEFAULT_COLOUR, trim=DEFAULT_TRIM):
    """The model's input decoded from an image file (:func:`decode_image`'s pixels).

    Returns
    -------
    pixels : ndarray of shape (size, size, 3), uint8
    """
    return decode_image(path, size, max_pixels, colour, trim).pixels


def reduced_copy(path, side, max_pixels, grey=False, colour_too=False):
    """The file's first frame, upright, in RGB (:func:`to_rgb`), or left in L with ``grey``
    when it is grey already, with its shorter side reduced to about ``side`` pixels (never below).
    A colour JPEG is decoded in grey with ``grey`` (libjpeg skips its colours), and in YCbCr
    with ``colour_too`` as well: its Y band is that grey, and its colours cost no second decode.

    Returns
    -------
    image : PIL.Image.Image
    decoder : str
        The decoder that read the file (the module's docstring lists them).
    """
    with Image.open(path) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"{width} x {height} pixels is more than {named('max_pixels')}={max_pixels}")
        decoder = "Pillow"
        if image.format == "PNG" or (
            image.format == "TIFF" and width * height * len(image.getbands()) > VIPS_TIFF_BYTES
        ):
            reduced = _vips_reduced(path, side, grey)
            if reduced is not None:
                return reduced, "libvips"
            decoder = FALLBACK
        elif image.format in ("JPEG", "MPO"):
            # libjpeg scales by 1/2, 1/4 or 1/8
            luma = "YCbCr" if colour_too and _ycbcr_coded(image) else "L"
            image.draft(luma if grey else "RGB", (side, side))
            decoder = "Pillow draft"
        elif image.format == "JPEG2000":
            image.reduce = _halvings(min(width, height), side)  # OpenJPEG decodes only these levels
            decoder = "Pillow levels"
        image.load()
        image = ImageOps.exif_transpose(image)
        factor = min(image.size) // side
        if image.mode == "YCbCr":
            return (image.reduce(factor) if factor >= 2 else image), decoder
        if factor >= 2 and image.mode in REDUCIBLE:  # the one full-resolution copy goes at once
            return _converted(image.reduce(factor), grey), decoder
        image = _converted(image, grey)
        return (image.reduce(factor) if factor >= 2 else image), decoder


def _ycbcr_coded(image):
    """Whether a JPEG's three components are YCbCr, by libjpeg's own rule (``jdapimin.c``):
    those libjpeg decodes in YCbCr (an RGB-coded one only to RGB or grey)."""
    if image.mode != "RGB" or len(image.layer) != 3:
        return False
    if "jfif" in image.info:
        return True
    if "adobe_transform" in image.info:
        return image.info["adobe_transform"] != 0
    return [component[0] for component in image.layer] != [82, 71, 66]  # "R", "G", "B"


def _converted(image, grey):
    """:func:`to_rgb`'s copy, or the frame itself when it is already the grey one wants."""
    return image if grey and image.mode == "L" and "transparency" not in image.info else to_rgb(image)


def _halvings(shorter, side):
    """How many times ``shorter`` can be halved and stay at least ``side``."""
    n = 0
    while shorter // 2 ** (n + 1) >= side:
        n += 1
    return n


_VIPS_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _vips_reduced(path, side, grey=False):
    """libvips' reduced copy (as :func:`reduced_copy`'s), or None where Pillow must decode the
    file instead: libvips cannot read it, or its pixels are not 8- or 16-bit integers."""
    pyvips = _pyvips()
    try:
        header = pyvips.Image.new_from_file(path, fail_on="error")
        if header.format not in ("uchar", "ushort"):
            return None
        width, height = header.width, header.height
        if header.get_typeof("orientation") and header.get("orientation") in (5, 6, 7, 8):
            width, height = height, width  # thumbnail turns the image upright first
        scale = min(1.0, side / min(width, height))
        target = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        reduced = pyvips.Image.thumbnail(path, target[0], height=target[1], size="force", fail_on="error")
        pixels = reduced.numpy()
    except pyvips.Error:
        return None
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 0..65,535 to 0..255
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    if reduced.interpretation == "cmyk" and bands == 4:
        return _converted(Image.fromarray(pixels, "CMYK"), grey)
    if bands not in _VIPS_MODES:
        return None
    return _converted(Image.fromarray(np.ascontiguousarray(pixels), _VIPS_MODES[bands]), grey)


_vips = None


def _pyvips():
    """pyvips, set for decoder processes: no operation cache (no file is read twice) and one
    thread (a decoder process is one core's work)."""
    global _vips
    if _vips is None:
        # pyvips passes libvips' every message to logging, "threadpool completed" at INFO
        logging.getLogger("pyvips").setLevel(logging.WARNING)
        import pyvips

        pyvips.cache_set_max(0)
        pyvips.concurrency_set(1)
        _vips = pyvips
    return _vips


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
