"""Archival masters for the extraction benchmark: page scans of 17.5 and 35 megapixels in the
formats libraries keep, made reproducibly, and each format's decoding measured three ways in
one run: the pipeline's decoder (:func:`pipeline.images.decode_image`), the reference libvips
``thumbnail`` (one thread, shrink-on-load, grey, to the same reduced size), and Pillow's whole
decode as the pipeline did it before the fast decoders (full resolution, then converted,
trimmed and resized)."""

import os

import numpy as np
from PIL import Image, ImageOps

from pipeline.decoders import DecoderPool
from pipeline.images import decode_image, reduced_side, to_rgb, trim_box

from .common import Timer

#: Page sizes of the masters (width x height): a 600 dpi octavo page and a folio.
PAGES = ((3500, 5000), (5000, 7000))


def _tiff(compression=None, mode="RGB"):
    return lambda page, path: page.convert(mode).save(path, "TIFF", compression=compression)


def _tiff16(page, path):
    import pyvips

    values = np.asarray(page, dtype=np.uint16) * 257
    pyvips.Image.new_from_array(values).copy(interpretation="rgb16").tiffsave(path, compression="lzw")


#: (name, file suffix, writer(page, path)) of each format of the benchmark.
FORMATS = (
    ("JPEG q90", "jpg", lambda page, path: page.save(path, "JPEG", quality=90)),
    ("TIFF uncompressed RGB", "tif", _tiff()),
    ("TIFF LZW RGB", "tif", _tiff("tiff_lzw")),
    ("TIFF deflate RGB", "tif", _tiff("tiff_adobe_deflate")),
    ("TIFF uncompressed grey", "tif", _tiff(mode="L")),
    ("TIFF LZW grey", "tif", _tiff("tiff_lzw", "L")),
    ("TIFF LZW RGB 16-bit", "tif", _tiff16),
    ("PNG RGB", "png", lambda page, path: page.save(path, "PNG", compress_level=6)),
    ("PNG grey", "png", lambda page, path: page.convert("L").save(path, "PNG", compress_level=6)),
    ("JPEG 2000 RGB", "jp2", lambda page, path: page.save(path, "JPEG2000")),
)


def page_scan(picture, size, seed):
    """A scanned page: ``picture`` (a PIL image) on paper with its grain, in a margin of about a
    tenth of each side, as a copy stand or a book scanner keeps it."""
    rng = np.random.default_rng(seed)
    width, height = size
    paper = rng.normal(0, 3, (height, width, 1)) + np.array([236.0, 230.0, 214.0])
    page = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    inner = (width * 4 // 5, height * 7 // 10)
    page.paste(picture.convert("RGB").resize(inner, Image.Resampling.BICUBIC), (width // 10, height * 3 // 20))
    return page


def pictures(n, seed=0):
    """``n`` different pictures from the demo's sample photos (each cropped and mirrored its own way)."""
    from pipeline.demo import BASES, base_image

    rng = np.random.default_rng(seed)
    bases = [base_image(name) for name in BASES]
    found = []
    for i in range(n):
        base = bases[i % len(bases)]
        w, h = base.size
        dx, dy = (int(v) for v in rng.integers(0, [w // 8, h // 8]))
        picture = base.crop((dx, dy, dx + w * 7 // 8, dy + h * 7 // 8))
        found.append(ImageOps.mirror(picture) if (i // len(bases)) % 2 else picture)
    return found


def write_masters(directory, names=None, pages=PAGES, seed=0):
    """One master per format and page size, each of another picture: {(format, size): path}."""
    os.makedirs(directory, exist_ok=True)
    chosen = [f for f in FORMATS if names is None or f[0] in names]
    shots = pictures(len(chosen) * len(pages), seed)
    paths = {}
    for i, (name, suffix, write) in enumerate(chosen):
        for j, size in enumerate(pages):
            path = os.path.join(directory, f"{i:02d}-{size[0]}x{size[1]}.{suffix}")
            write(page_scan(shots[i * len(pages) + j], size, seed + i * len(pages) + j), path)
            paths[name, size] = path
    return paths


def write_mixed(directory, pictures_, small=False, seed=0, page=PAGES[0]):
    """The pages of ``pictures_`` as masters (of ``page`` pixels, the formats in turn), or as
    JPEGs of 840 x 1140 (the size of the benchmark's other images) with ``small``: their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, picture in enumerate(pictures_):
        if small:
            path = os.path.join(directory, f"{i:06d}.jpg")
            page_scan(picture, (840, 1140), seed + i).save(path, "JPEG", quality=90)
        else:
            name, suffix, write = FORMATS[i % len(FORMATS)]
            path = os.path.join(directory, f"{i:06d}.{suffix}")
            write(page_scan(picture, page, seed + i), path)
        paths.append(path)
    return paths


def libvips_reference(path, side):
    """The reference decoder: libvips' ``thumbnail`` in one thread, shrink-on-load, grey, to a
    copy whose shorter side is ``side`` (None for a format it cannot read)."""
    import pyvips

    try:
        header = pyvips.Image.new_from_file(path)
        scale = min(1.0, side / min(header.width, header.height))
        target = (max(1, round(header.width * scale)), max(1, round(header.height * scale)))
        thumb = pyvips.Image.thumbnail(path, target[0], height=target[1], size="force")
        return thumb.colourspace("b-w").numpy()
    except pyvips.Error:
        return None


def pillow_whole(path, size=224, colour="grey", trim=True):
    """Pillow's whole decode, as the pipeline decoded before its fast decoders: a JPEG in draft
    mode at twice the input with ``trim``, any other format at full resolution, then converted,
    trimmed and resized at that resolution."""
    with Image.open(path) as image:
        image.draft("RGB", (2 * size, 2 * size) if trim else (size, size))
        image = to_rgb(ImageOps.exif_transpose(image))
        if colour == "grey":
            image = image.convert("L")
        box = trim_box(image) if trim else None
        return np.asarray((image.crop(box) if box else image).resize((size, size), Image.Resampling.BILINEAR))


def decoding_figures(paths, colour, trim, repeats=3):
    """Per format: ms per image of the pipeline's decoder, of the libvips reference and of
    Pillow's whole decode (in this process, the three in turn on each file, ``repeats`` times:
    the median of each file's times, averaged over the files), and the peak resident memory of
    a decoder process that decodes the format's files (MB)."""
    import pyvips

    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)
    side = reduced_side(trim=trim)
    per_format = {}
    for name, *_ in FORMATS:
        files = [p for (n, _), p in paths.items() if n == name]
        if not files:
            continue
        decoders = {
            "pipeline": lambda p: decode_image(p, colour=colour, trim=trim),
            "libvips": lambda p: libvips_reference(p, side),
            "pillow_whole": lambda p: pillow_whole(p, colour=colour, trim=trim),
        }
        decoders = {label: d for label, d in decoders.items() if d(files[0]) is not None}  # and warmed up
        times = {(label, path): [] for label in decoders for path in files}
        for _ in range(repeats):
            for path in files:
                for label, decode in decoders.items():
                    with Timer() as t:
                        decode(path)
                    times[label, path].append(t.seconds)
        row = {
            label: round(1000 * float(np.mean([np.median(times[label, p]) for p in files])), 1)
            if label in decoders
            else None
            for label in ("pipeline", "libvips", "pillow_whole")
        }
        row["decoder"] = decode_image(files[0], colour=colour, trim=trim).decoder
        row["decoder_peak_mb"] = decoder_peak_mb(files, colour, trim)
        per_format[name] = row
    return per_format


def decoder_peak_mb(paths, colour, trim):
    """Peak resident memory (MB) of one of the pipeline's decoder processes decoding ``paths``."""
    with DecoderPool(processes=1, options={"colour": colour, "trim": trim}) as pool:
        for _ in pool.imap(paths):
            pass
        (decoder,) = pool._decoders
        with open(f"/proc/{decoder.process.pid}/status") as f:
            return round(next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")))
