"""Decoding one image file into the model's input: RGB, 224 x 224, float32 in 0..255."""

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

INPUT_SIZE = 224


def load_image(path, size=INPUT_SIZE):
    """Decode an image file and resize it to the model's input size.

    The EXIF orientation is applied and the image is converted to RGB (greyscale is repeated
    over the three channels, transparency is dropped). The image is resized to ``size`` x
    ``size`` without keeping its aspect ratio, as Keras's ``load_img(target_size=...)`` does.

    Parameters
    ----------
    path : str
    size : int

    Returns
    -------
    pixels : ndarray of shape (size, size, 3), float32, RGB in 0..255

    Raises
    ------
    ImageError
        When the file cannot be read or decoded.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the scan is large
            image = ImageOps.exif_transpose(image).convert("RGB")
            image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(reason) from None
