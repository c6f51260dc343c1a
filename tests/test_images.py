import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageError
from pipeline.images import load_image


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "1"])
def test_any_common_mode_becomes_rgb_224(tmp_path, mode):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    Image.new("RGB", (300, 200), (200, 30, 30)).convert(mode).save(path)
    pixels = load_image(path)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    assert 0 <= pixels.min() and pixels.max() <= 255


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 100, 100))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / "r.jpg", exif=exif)
    pixels = load_image(tmp_path / "r.jpg")
    # after rotation the white half is on top
    assert pixels[:100].mean() > 200 and pixels[124:].mean() < 50


@pytest.mark.parametrize("content", [b"", b"<html>not found</html>", bytes(range(256)) * 4])
def test_undecodable_file_raises_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "\n" not in str(info.value) and str(info.value)
