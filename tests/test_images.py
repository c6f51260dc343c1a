import os
import signal

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline import errors, images
from pipeline.decoders import DecoderPool
from pipeline.errors import ImageError, PipelineError
from pipeline.images import decode_image, load_image, trim_box

from .conftest import as_ordinary_user, png_declaring
from .decoders import decoder_processes, misbehaving


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "1"])
def test_any_common_mode_becomes_rgb_224(tmp_path, mode):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    Image.new("RGB", (300, 200), (200, 30, 30)).convert(mode).save(path)
    pixels = load_image(path)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert 0 <= pixels.min() and pixels.max() <= 255


def picture(seed=0, side=300):
    """A detailed colour picture: smooth colour areas and some edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
    image.paste((10, 10, 10), (side // 5, side // 3, side // 2, side // 3 + 12))
    return image


def test_a_uniform_margin_is_trimmed_so_a_framed_copy_looks_like_the_picture(tmp_path):
    bare = picture()
    framed = ImageOps.expand(bare, border=45, fill=(236, 228, 208))  # a page's paper around the plate
    bare.save(tmp_path / "bare.png")
    framed.save(tmp_path / "framed.jpg", quality=90)
    assert np.abs(np.subtract(trim_box(framed), (45, 45, 345, 345))).max() <= 2  # found on a copy 256 wide
    assert trim_box(bare) is None
    whole = np.abs(
        load_image(tmp_path / "framed.jpg", trim=False).astype(int) - load_image(tmp_path / "bare.png", trim=False)
    ).mean()
    trimmed = np.abs(
        load_image(tmp_path / "framed.jpg", trim=True).astype(int) - load_image(tmp_path / "bare.png", trim=True)
    ).mean()
    assert trimmed < 4 < whole


@pytest.mark.parametrize(
    "image, box",
    [
        (Image.new("RGB", (200, 200), (236, 228, 208)), None),  # a blank page: nothing to trim to
        (ImageOps.expand(picture(side=60), border=70, fill=(255, 255, 255)), None),  # a small mark: kept whole
        (ImageOps.expand(picture(side=200), border=(0, 0, 0, 30), fill=(120, 160, 220)), (0, 0, 200, 200)),
    ],
)
def test_trimming_keeps_at_least_half_of_each_side(image, box):
    found = trim_box(image)
    assert found == box or np.abs(np.subtract(found, box)).max() <= 2


def test_in_grey_a_colour_scan_and_its_greyscale_copy_are_the_same_input(tmp_path):
    picture(1).save(tmp_path / "colour.png")
    ImageOps.grayscale(picture(1)).save(tmp_path / "grey.png")
    colour, grey = load_image(tmp_path / "colour.png", colour="grey"), load_image(tmp_path / "grey.png", colour="grey")
    assert (colour[..., 0] == colour[..., 1]).all() and (colour[..., 1] == colour[..., 2]).all()
    assert np.abs(colour.astype(int) - grey).max() <= 2  # luma, then reduced; or reduced, then luma
    in_colour = load_image(tmp_path / "colour.png", colour="rgb").astype(int)
    assert np.abs(in_colour - load_image(tmp_path / "grey.png", colour="rgb")).mean() > 10


@pytest.mark.parametrize("trim", [True, False])
@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_grey_is_the_luma_of_the_colour_input(tmp_path, trim, fmt):
    # a JPEG's grey input is its own luma band, decoded alone (cheaper); it is the colour
    # input's luma up to the decoder's rounding, and the margin is found the same way
    framed = ImageOps.expand(picture(3, side=900), border=(150, 60, 90, 120), fill=(236, 228, 208))
    framed.save(tmp_path / "framed", fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    grey = load_image(tmp_path / "framed", colour="grey", trim=trim)
    luma = np.asarray(Image.fromarray(load_image(tmp_path / "framed", colour="rgb", trim=trim)).convert("L"))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    difference = np.abs(grey[..., 0].astype(int) - luma)
    assert difference.max() <= 2 and difference.mean() < 0.25
    untrimmed = load_image(tmp_path / "framed", colour="grey", trim=False)
    assert trim == (np.abs(untrimmed.astype(int) - grey).mean() > 10)


def test_the_decoder_pool_prepares_images_as_asked(tmp_path):
    framed = ImageOps.expand(picture(2), border=40, fill=(255, 255, 255))
    framed.save(tmp_path / "framed.png")
    with DecoderPool(processes=1, options={"colour": "grey", "trim": True}) as pool:
        pixels = next(pool.imap([str(tmp_path / "framed.png")])).pixels
    np.testing.assert_array_equal(pixels, load_image(tmp_path / "framed.png", colour="grey", trim=True))


@pytest.mark.parametrize("name", ["r.jpg", "r.tif", "r.png"])
def test_exif_orientation_is_applied(tmp_path, name):
    image = Image.new("RGB", (600, 300), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 300, 300))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / name, exif=exif)
    pixels = load_image(tmp_path / name)
    # after rotation the white half is on top
    assert pixels[:100].mean() > 200 and pixels[124:].mean() < 50


@pytest.mark.parametrize("content", [b"", b"<html>not found</html>", bytes(range(256)) * 4])
def test_undecodable_file_raises_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "\n" not in str(info.value) and str(info.value)


def test_16_bit_greyscale_maps_its_full_range(tmp_path):
    values = np.full((50, 80), 32896, dtype=np.uint16)  # 128 * 257
    values[:, 40:] = 65535
    Image.fromarray(values).save(tmp_path / "g16.png")
    pixels = load_image(tmp_path / "g16.png")
    assert abs(pixels[:, :100].mean() - 128) < 1 and pixels[:, 124:].min() == 255


def test_float_images_map_from_0_1_or_their_own_range(tmp_path):
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    assert abs(load_image(tmp_path / "f.tif").mean() - 127.5) < 1
    ramp = np.tile(np.linspace(-1000, 1000, 64, dtype=np.float32), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "r.tif")
    pixels = load_image(tmp_path / "r.tif")
    assert pixels[:, 0].max() < 10 and pixels[:, -1].min() > 245


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1", "L", "RGB"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    image = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # fully transparent black
    image.paste((200, 0, 0, 255) if mode != "1" else (255, 255, 255, 255), (0, 0, 30, 60))  # opaque left half
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
        image.save(tmp_path / "x.png", transparency=image.getpixel((59, 0)))
    elif mode in ("1", "L", "RGB"):  # one colour (black) declared transparent
        image.convert(mode).save(tmp_path / "x.png", transparency=(0, 0, 0) if mode == "RGB" else 0)
    else:
        image.convert(mode).save(tmp_path / "x.png")
    pixels = load_image(tmp_path / "x.png")
    assert pixels[:, 150:].min() == 255  # the transparent half shows white, not black


def test_multi_page_tiff_and_animated_gif_use_their_first_frame(tmp_path):
    white, black = Image.new("RGB", (40, 40), "white"), Image.new("RGB", (40, 40), "black")
    white.save(tmp_path / "pages.tif", save_all=True, append_images=[black, black])
    white.save(tmp_path / "anim.gif", save_all=True, append_images=[black, black], duration=100, loop=0)
    assert load_image(tmp_path / "pages.tif").min() == 255
    assert load_image(tmp_path / "anim.gif").min() == 255


@pytest.mark.parametrize("size", [(1, 1), (20000, 10)])
def test_extreme_shapes_are_resized(tmp_path, size):
    Image.new("RGB", size, (10, 200, 10)).save(tmp_path / "x.png")
    pixels = load_image(tmp_path / "x.png", colour="rgb")
    assert pixels.shape == (224, 224, 3) and abs(pixels[..., 1].mean() - 200) < 1


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    with pytest.raises(ImageError, match=r"100000 x 100000 pixels is more than \[images\] max_pixels"):
        load_image(png_declaring(tmp_path / "bomb.png", 100_000, 100_000))
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="max_pixels=50000"):
        load_image(tmp_path / "big.png", max_pixels=50_000)


@pytest.mark.parametrize("names, named", [(None, "[images] max_pixels=50000"), ({}, "is more than max_pixels=50000")])
def test_a_decoder_process_names_the_setting_as_its_parent_does(tmp_path, monkeypatch, names, named):
    if names is not None:  # the library alone; else as the tasks name it
        monkeypatch.setattr(errors, "NAMES", names)
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with DecoderPool(processes=1, max_pixels=50_000) as pool:
        (result,) = pool.imap([str(tmp_path / "big.png")])
    assert isinstance(result, ImageError) and named in str(result)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_rejected(tmp_path, fmt):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(tmp_path / "full", fmt)
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "cut")
    assert "\n" not in str(info.value)


@pytest.fixture()
def misbehaving_files(tmp_path):
    """Good images, and files the test decoder hangs on, crashes on or fails with a bug on."""
    names = ["a.png", "hang.png", "b.png", "crash.png", "bug.png", "c.png", "d.png"]
    for i, name in enumerate(names):
        Image.new("RGB", (60, 40), (30 * i, 100, 0)).save(tmp_path / name)
    return [str(tmp_path / name) for name in names]


def test_decoder_pool_rejects_only_the_file_that_hangs_crashes_or_fails(misbehaving_files):
    with DecoderPool(processes=2, timeout=3, decode=misbehaving) as pool:
        results = dict(zip(misbehaving_files, pool.imap(misbehaving_files)))
        again = list(pool.imap(misbehaving_files[:1]))  # the pool goes on after replacing decoders
    by_name = {os.path.basename(p): r for p, r in results.items()}
    assert "decode_timeout=3 s" in str(by_name["hang.png"])
    assert "died on this file (killed by signal SIGSEGV)" in str(by_name["crash.png"])
    assert str(by_name["bug.png"]) == "decoder error struct_error: unpack requires a buffer of 4 bytes"
    for path, result in results.items():
        if os.path.basename(path) in ("a.png", "b.png", "c.png", "d.png"):
            np.testing.assert_array_equal(result.pixels, load_image(path))
        else:
            assert isinstance(result, ImageError)
    np.testing.assert_array_equal(again[0].pixels, load_image(misbehaving_files[0]))
    assert decoder_processes() == []


def test_decoder_pool_stops_its_processes_when_the_consumer_leaves_early(misbehaving_files):
    with DecoderPool(processes=2, timeout=60, decode=misbehaving) as pool:
        results = pool.imap(misbehaving_files)
        next(results)
        assert len(decoder_processes()) == 2
        results.close()  # one decoder is still on hang.png
        assert len(decoder_processes()) <= 1
    assert decoder_processes() == []


def test_decoder_processes_that_cannot_start_are_a_one_line_error(monkeypatch):
    monkeypatch.setattr("sys.executable", "/bin/false")
    with pytest.raises(PipelineError, match=r"^an image decoder process ended at start \(exit code 1\)"):
        with DecoderPool(processes=1) as pool:
            list(pool.imap(["x.png"]))


def test_a_file_without_read_permission_is_rejected(shared_dir):
    Image.new("RGB", (30, 20)).save(shared_dir / "locked.png")
    (shared_dir / "locked.png").chmod(0o000)
    with as_ordinary_user(), pytest.raises(ImageError, match="Permission denied"):
        load_image(shared_dir / "locked.png")


def test_a_decoder_that_died_while_idle_is_replaced(misbehaving_files):
    with DecoderPool(processes=1) as pool:
        list(pool.imap(misbehaving_files[:1]))
        (pid,) = decoder_processes()
        os.kill(pid, signal.SIGKILL)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped by the pool
        np.testing.assert_array_equal(next(pool.imap(misbehaving_files[:1])).pixels, load_image(misbehaving_files[0]))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_text("not an image"), "not a recognised image format"),
        (lambda p: p.write_bytes(b""), "not a recognised image format"),
        (lambda p: None, "No such file or directory"),
        (lambda p: p.mkdir(), "Is a directory"),
        (lambda p: p.symlink_to(p), "Too many levels of symbolic links"),
    ],
)
def test_reasons_name_no_folder_of_the_machine(tmp_path, make, reason):
    path = tmp_path / "PPN1 private" / "scan.jpg"
    path.parent.mkdir()
    make(path)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == reason
    with DecoderPool(processes=1) as pool:
        assert str(next(pool.imap([str(path)]))) == reason


def test_a_decoder_bug_that_names_the_file_is_reported_without_its_folder(tmp_path):
    path = tmp_path / "leak.png"
    Image.new("RGB", (30, 20)).save(path)
    with DecoderPool(processes=1, decode=misbehaving) as pool:
        reason = str(next(pool.imap([str(path)])))
    assert reason == "decoder error struct_error: cannot parse 'leak.png' at offset 8"


@pytest.mark.parametrize(
    "name, fmt, options",
    [
        ("a.ppm", None, {}),
        ("a.pgm", None, {}),
        ("a.pbm", None, {}),
        ("a.pnm", None, {}),
        ("a.tga", None, {}),
        ("a.j2k", "JPEG2000", {"no_jp2": True}),
        ("a.jpf", "JPEG2000", {}),
        ("a.jpx", "JPEG2000", {}),
        ("A.JPG", "JPEG", {}),
        ("no extension", "PNG", {}),
        ("png named.jpg", "PNG", {}),
    ],
)
def test_files_are_decoded_by_their_content_whatever_their_extension(tmp_path, name, fmt, options):
    mode = {"a.pgm": "L", "a.pbm": "1"}.get(name, "RGB")
    Image.new("RGB", (60, 40), (200, 30, 30)).convert(mode).save(tmp_path / name, fmt, **options)
    assert load_image(tmp_path / name).shape == (224, 224, 3)


def page_scan(seed=0, size=(1500, 2100)):
    """A page: a detailed picture on noisy paper, as a scanner keeps it."""
    rng = np.random.default_rng(seed)
    width, height = size
    paper = np.clip(rng.normal(230, 3, (height, width, 1)) + [6, 0, -16], 0, 255).astype(np.uint8)
    page = Image.fromarray(paper)
    page.paste(picture(seed, side=width * 3 // 4).resize((width * 3 // 4, height * 2 // 3)), (width // 8, height // 8))
    return page


@pytest.mark.parametrize(
    "save, vips_tiff_bytes, decoder",
    [
        (lambda im, p: im.save(p, "JPEG", quality=90), None, "Pillow draft"),
        (lambda im, p: im.save(p, "TIFF"), None, "Pillow"),
        (lambda im, p: im.save(p, "TIFF"), 0, "libvips"),
        (lambda im, p: im.save(p, "TIFF", compression="tiff_lzw"), 0, "libvips"),
        (lambda im, p: im.convert("L").save(p, "TIFF", compression="tiff_adobe_deflate"), 0, "libvips"),
        (lambda im, p: im.save(p, "PNG"), None, "libvips"),
        (lambda im, p: im.save(p, "JPEG2000"), None, "Pillow levels"),
        (lambda im, p: im.save(p, "BMP"), None, "Pillow"),
    ],
    ids=["jpeg", "small-tiff", "tiff", "tiff-lzw", "grey-tiff-deflate", "png", "jpeg2000", "bmp"],
)
@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_every_decoder_gives_the_picture_a_whole_decode_gives(
    tmp_path, monkeypatch, save, vips_tiff_bytes, decoder, colour
):
    # each decoder's reduced copy is the picture the whole decode (Pillow, full resolution,
    # then trimmed and resized) gives, up to resampling
    if vips_tiff_bytes is not None:  # libvips for this small TIFF, as for a master
        monkeypatch.setattr(images, "VIPS_TIFF_BYTES", vips_tiff_bytes)
    page = page_scan()
    save(page, tmp_path / "page")
    decoded = decode_image(tmp_path / "page", colour=colour, trim=True)
    assert decoded.decoder == decoder and decoded.pixels.shape == (224, 224, 3)
    with Image.open(tmp_path / "page") as image:
        full = image.convert("L" if colour == "grey" or image.mode == "L" else "RGB")
    expected = np.asarray(full.resize((224, 224), Image.Resampling.BILINEAR, box=trim_box(full)).convert("RGB"))
    assert np.abs(decoded.pixels.astype(int) - expected).mean() < 4


def test_16_bit_rgb_tiff_maps_its_full_range(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "VIPS_TIFF_BYTES", 0)
    values = np.full((300, 400, 3), 32896, dtype=np.uint16)  # 128 * 257
    values[:, 200:] = 65535
    import pyvips

    pyvips.Image.new_from_array(values).copy(interpretation="rgb16").tiffsave(str(tmp_path / "rgb16.tif"))
    decoded = decode_image(tmp_path / "rgb16.tif")
    assert decoded.decoder == "libvips"
    assert abs(decoded.pixels[:, :100].mean() - 128) < 1 and decoded.pixels[:, 124:].min() == 255


def test_what_libvips_cannot_decode_pillow_does(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "VIPS_TIFF_BYTES", 0)
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")  # float pixels
    decoded = decode_image(tmp_path / "f.tif")
    assert decoded.decoder == "Pillow after libvips" and abs(decoded.pixels.mean() - 127.5) < 1


def test_the_pool_counts_the_files_of_each_decoder(tmp_path):
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "a.bmp")
    page_scan(size=(300, 400)).save(tmp_path / "page.png")
    (tmp_path / "bad.png").write_bytes(b"")
    with DecoderPool(processes=1) as pool:
        results = list(pool.imap([str(tmp_path / n) for n in ("a.bmp", "page.png", "a.bmp", "bad.png")]))
    assert [r.pixels.shape for r in results[:3]] == [(224, 224, 3)] * 3 and isinstance(results[3], ImageError)
    assert pool.decoded_by == {"Pillow": 2, "libvips": 1}


def test_a_large_scan_is_never_held_at_full_resolution_in_its_decoder(tmp_path):
    page = page_scan(size=(4000, 6000))
    page.save(tmp_path / "page.tif", "TIFF", compression="tiff_lzw")
    page.resize((300, 450)).save(tmp_path / "small.png")
    full_mb = 4000 * 6000 * 3 / 2**20
    with DecoderPool(processes=1) as pool:
        list(pool.imap([str(tmp_path / "small.png")]))  # started, libvips loaded
        (pid,) = decoder_processes()
        before = memory_mb(pid, "VmRSS")
        pixels = next(pool.imap([str(tmp_path / "page.tif")])).pixels
        peak = memory_mb(pid, "VmHWM")
    assert pixels.shape == (224, 224, 3)
    assert peak - before < full_mb / 3, (
        f"decoder peak {peak:.0f} MB, {before:.0f} MB before: a full copy is {full_mb:.0f} MB"
    )


def memory_mb(pid, field):
    """A field of /proc/PID/status (VmRSS, VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
