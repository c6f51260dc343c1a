"""Decoding one image file into the model's input: RGB, 224 x 224, float32 in 0..255."""

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

INPUT_SIZE = 224
#: Default of ``[images] max_pixels``: larger images are rejected unread, against decompression bombs.
MAX_PIXELS = 400_000_000
# the pixel limit is ours (max_pixels), checked before any pixel is decoded
Image.MAX_IMAGE_PIXELS = None


def to_rgb(image):
    """An 8-bit RGB copy of a decoded frame, whatever its mode.

    - 16-bit integer (``I;16`` and ``I`` with values up to 65,535): 0..65,535 maps to 0..255;
      other 32-bit integer and floating-point images: their own minimum..maximum maps to
      0..255 (floats already in 0..1 map from 0..1);
    - transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour): composited
      on white, as a page shows it;
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
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path, size=INPUT_SIZE, max_pixels=MAX_PIXELS):
    """Decode an image file and resize it to the model's input size.

    The first frame is taken (multi-page TIFF, animated GIF), the EXIF orientation is
    applied and the frame converted to RGB by :func:`to_rgb`. JPEGs are decoded at a
    reduced scale when much larger than ``size`` (Pillow's draft mode). The image is resized
    to ``size`` x ``size`` without keeping its aspect ratio, as Keras's
    ``load_img(target_size=...)`` does.

    Parameters
    ----------
    path : str
    size : int
    max_pixels : int
        Images with more pixels are rejected before decoding (decompression bombs).

    Returns
    -------
    pixels : ndarray of shape (size, size, 3), float32, RGB in 0..255

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
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the scan is large
            image = to_rgb(ImageOps.exif_transpose(image))
            image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(reason) from None
