"""Proxy collections for the quality benchmark: near-duplicate groups and unrelated distractors
made reproducibly from real photographs available offline.

Sources (each photo is cut into a grid of cells; a cell with too little detail is left out;
a group's base and every distractor are cells of their own, so no distractor shows a group's
picture):

- ``samples``: the photographs bundled with scikit-image and scikit-learn (pip packages of
  the project's requirements);
- ``wallpapers``: the photographs of Debian's ``plasma-workspace-wallpapers``;
- ``gnome``: the backgrounds of Debian's ``gnome-backgrounds`` (mostly drawn art, a few photos).

A group is one cell copied 2 to 12 times as digitization copies it: rescans (rotation, exposure,
blur), crops, page borders on toned paper, greyscale, bitonal and halftoned copies, strong
JPEG, resampling and mirrored prints, each copy one to three of these, saved as JPEG, PNG or
TIFF in a random record folder. A distractor is a window of another cell, lightly altered.
"""

import csv
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

#: Bump when the collections change: a cached collection of another version is made again.
VERSION = 1
SAMPLE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "cell",
    "stereo_motorcycle",
)
WALLPAPERS = "/usr/share/wallpapers"
GNOME = "/usr/share/backgrounds/gnome"
#: The Debian packages of the sources that are not pip packages.
DEBIAN_PACKAGES = {"wallpapers": "plasma-workspace-wallpapers", "gnome": "gnome-backgrounds"}
ALTERATIONS = ("rescan", "crop", "border", "greyscale", "bitonal", "halftone", "jpeg", "resample", "flip")
PAPER = np.array([236, 228, 208], dtype=np.float64)
#: Long side of a group's base picture before its copies are made.
BASE_SIDE = 448


@dataclass(frozen=True)
class Spec:
    """One proxy collection: its sources, cells, groups and distractors."""

    name: str
    sources: tuple
    groups: int
    distractors: int
    cell: int  # side of a cell, in pixels of the photo scaled to `longest` on its long side
    longest: int
    alterations: tuple = ALTERATIONS
    seed: int = 0
    group_sizes: tuple = (2, 12)  # smallest and largest group
    uniform_records: bool = False  # each record's distractors are windows of one cell: a book's alike pages


#: The benchmark's collections: four of about 320 images and one of several thousand.
COLLECTIONS = (
    Spec("samples", ("samples",), groups=30, distractors=100, cell=128, longest=640, seed=1),
    Spec("wallpapers-a", ("wallpapers:0",), groups=30, distractors=110, cell=200, longest=1600, seed=2),
    Spec("wallpapers-b", ("wallpapers:1",), groups=30, distractors=110, cell=240, longest=1600, seed=3),
    Spec("mixed", ("samples", "wallpapers", "gnome"), groups=32, distractors=100, cell=256, longest=2048, seed=4),
    Spec("large", ("samples", "wallpapers", "gnome"), groups=45, distractors=2700, cell=160, longest=1600, seed=5),
)
#: Collections run only when named (``--collections``): 25 records of 10 scans each and 50
#: distractors, with the milder alterations of a catalogue's rescans (rotation and exposure,
#: crops, page borders, greyscale), as a held-out check of the defaults.
MILD = ("rescan", "crop", "border", "greyscale")
EXTRA = (
    Spec(
        "tens-wallpapers",
        ("wallpapers",),
        groups=25,
        distractors=50,
        cell=220,
        longest=1800,
        alterations=MILD,
        seed=11,
        group_sizes=(10, 10),
    ),
    Spec(
        "tens-mixed",
        ("samples", "gnome"),
        groups=25,
        distractors=50,
        cell=150,
        longest=900,
        alterations=MILD,
        seed=12,
        group_sizes=(10, 10),
    ),
)
#: A collection whose records hold pages that resemble each other (each record's distractors are
#: windows of one picture), its groups spread over records: what ``same_record`` is for.
BOOKS = (
    Spec(
        "books",
        ("samples", "wallpapers", "gnome"),
        groups=30,
        distractors=300,
        cell=200,
        longest=1600,
        seed=21,
        uniform_records=True,
    ),
)


def missing_sources(specs=COLLECTIONS):
    """One line per Debian package a spec needs that is not installed."""
    needed = {s.split(":")[0] for spec in specs for s in spec.sources} & set(DEBIAN_PACKAGES)
    where = {"wallpapers": WALLPAPERS, "gnome": GNOME}
    return [
        f"{where[s]} is missing: apt-get install {DEBIAN_PACKAGES[s]} (a source of the proxy collections)"
        for s in sorted(needed)
        if not os.path.isdir(where[s])
    ]


def _wallpaper_files():
    """The largest JPEG of each wallpaper, sorted by name."""
    files = []
    for name in sorted(os.listdir(WALLPAPERS)):
        folder = os.path.join(WALLPAPERS, name, "contents", "images")
        jpegs = [f for f in os.listdir(folder) if f.endswith(".jpg")] if os.path.isdir(folder) else []
        if jpegs:
            files.append(os.path.join(folder, max(jpegs, key=lambda f: os.path.getsize(os.path.join(folder, f)))))
    return files


def photos(source):
    """(name, loader) of each photo of a source; ``wallpapers:0`` and ``wallpapers:1`` are its two halves."""
    kind, _, half = source.partition(":")
    if kind == "samples":

        def sample(name):
            if name in ("china", "flower"):
                from sklearn.datasets import load_sample_image

                return Image.fromarray(load_sample_image(f"{name}.jpg"))
            import skimage.data

            pixels = getattr(skimage.data, name)()
            return Image.fromarray(np.asarray(pixels[0] if isinstance(pixels, tuple) else pixels))

        return [(f"samples/{n}", lambda n=n: sample(n)) for n in SAMPLE_PHOTOS + ("china", "flower")]
    files = (
        _wallpaper_files()
        if kind == "wallpapers"
        else sorted(os.path.join(GNOME, f) for f in os.listdir(GNOME) if f.endswith((".webp", ".jpg", ".png")))
    )
    if half:
        files = files[int(half) :: 2]
    return [
        (f"{kind}/{os.path.relpath(f, WALLPAPERS if kind == 'wallpapers' else GNOME)}", lambda f=f: Image.open(f))
        for f in files
    ]


def cells(spec):
    """The cells of the spec's photos with enough detail: list of RGB PIL images, in a seeded order."""
    found = []
    for source in spec.sources:
        for _, load in photos(source):
            with load() as image:
                image.draft("RGB", (spec.longest, spec.longest))
                image = image.convert("RGB")
            image.thumbnail((spec.longest, spec.longest))
            w, h = image.size
            for y in range(0, h - spec.cell + 1, spec.cell):
                for x in range(0, w - spec.cell + 1, spec.cell):
                    cell = image.crop((x, y, x + spec.cell, y + spec.cell))
                    if np.asarray(cell.convert("L"), dtype=np.float64).std() >= 24:
                        found.append(cell)
    order = np.random.default_rng([spec.seed, 0]).permutation(len(found))
    return [found[i] for i in order]


def _paper(image, rng):
    """The image on toned paper: white turns paper-coloured, as an old page scans."""
    tone = PAPER + rng.uniform(-12, 12, size=3)
    pixels = np.asarray(image, dtype=np.float64) * (tone / 255.0)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _halftone(image, rng):
    """A clustered-dot screen of the grey image, as a printed reproduction shows under the scanner."""
    cell = int(rng.integers(3, 6))
    grey = np.asarray(ImageOps.grayscale(image), dtype=np.float64) / 255.0
    yy, xx = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
    # distance from the centre of each screen cell sets the threshold: dark areas grow big dots
    dy, dx = (yy % cell) - (cell - 1) / 2, (xx % cell) - (cell - 1) / 2
    threshold = np.sqrt(dy**2 + dx**2) / (np.sqrt(2) * cell / 2)
    ink = (1.0 - grey) > threshold
    return Image.fromarray(np.where(ink, 20, 245).astype(np.uint8)).convert("RGB")


def alter(image, kind, rng):
    """One digitization alteration of an RGB PIL image (see ALTERATIONS)."""
    w, h = image.size
    if kind == "rescan":
        turned = image.rotate(
            float(rng.uniform(0.5, 4)) * rng.choice([-1, 1]),
            resample=Image.Resampling.BICUBIC,
            expand=True,
            fillcolor=tuple(int(v) for v in PAPER),
        )
        turned = ImageEnhance.Brightness(turned).enhance(float(rng.uniform(0.75, 1.25)))
        turned = ImageEnhance.Contrast(turned).enhance(float(rng.uniform(0.75, 1.25)))
        return turned.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    if kind == "crop":
        fx, fy = rng.uniform(0.65, 0.9, size=2)
        cw, ch = max(8, int(w * fx)), max(8, int(h * fy))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch))
    if kind == "border":
        margin = max(4, int(float(rng.uniform(0.04, 0.12)) * max(w, h)))
        framed = ImageOps.expand(image, border=int(rng.integers(0, 3)), fill=(40, 40, 40))
        return _paper(ImageOps.expand(framed, border=margin, fill=(255, 255, 255)), rng)
    if kind == "greyscale":
        return ImageOps.grayscale(image).convert("RGB")
    if kind == "bitonal":
        grey = ImageOps.grayscale(image)
        if rng.integers(0, 2):
            return grey.convert("1").convert("RGB")  # Floyd-Steinberg dithering
        cut = float(np.median(np.asarray(grey)))
        return grey.point(lambda v: 255 if v > cut else 0).convert("RGB")
    if kind == "halftone":
        return _halftone(image, rng)
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(8, 21)))
        return Image.open(buffer).convert("RGB")
    if kind == "resample":
        f = float(rng.uniform(0.25, 0.5))
        return image.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR)
    if kind == "flip":
        return ImageOps.mirror(image)
    raise ValueError(f"unknown alteration {kind!r}")


def _save(image, path_stem, rng):
    fmt = rng.choice(["jpg", "png", "tif"], p=[0.6, 0.2, 0.2])
    path = f"{path_stem}.{fmt}"
    if fmt == "jpg":
        image.save(path, "JPEG", quality=90)
    elif fmt == "png":
        image.save(path, "PNG")
    else:
        image.save(path, "TIFF", compression="tiff_deflate")
    return path


def make_collection(spec, dest):
    """Write ``dest/PPN<id>/<file>``, ``dest/image_ids.csv`` and ``dest/labels.csv``; the same spec
    writes the same files. Returns a summary (images, groups, distractors, sizes)."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    pool = cells(spec)
    rng = np.random.default_rng([spec.seed, 1])
    sizes = rng.integers(spec.group_sizes[0], spec.group_sizes[1] + 1, size=spec.groups)
    if len(pool) < spec.groups + 1:
        raise ValueError(f"{spec.name}: {len(pool)} cells for {spec.groups} groups")
    bases, spare = pool[: spec.groups], pool[spec.groups :]
    records = max(2, (int(sizes.sum()) + spec.distractors) // 10)
    rows, labels = [], []

    def add(image, label, name, record=None):
        ppn = f"PPN{700000 + (int(rng.integers(0, records)) if record is None else record):06d}"
        os.makedirs(os.path.join(dest, ppn), exist_ok=True)
        path = _save(image, os.path.join(dest, ppn, name), rng)
        image_id = 1000 + len(rows)
        rows.append((image_id, ppn, os.path.basename(path)))
        labels.append((image_id, label))

    for g, (cell, size) in enumerate(zip(bases, sizes)):
        base = cell.resize((BASE_SIDE, BASE_SIDE), Image.Resampling.BICUBIC)
        for member in range(size):
            copy = base
            if member:  # the first copy is the print as it is; the others as digitization altered them
                for kind in rng.choice(spec.alterations, size=int(rng.integers(1, 4)), replace=False):
                    copy = alter(copy, kind, rng)
            add(copy, f"group{g:03d}", f"g{g:03d}-{member:02d}")
    for d in range(spec.distractors):
        book = d % records if spec.uniform_records else None
        cell = spare[(d if book is None else book) % len(spare)]
        if d >= len(spare) or book is not None:  # more distractors than cells, or a book's page: a window
            side = int(cell.size[0] * rng.uniform(0.55, 0.8))
            x, y = (int(v) for v in rng.integers(0, cell.size[0] - side + 1, size=2))
            cell = cell.crop((x, y, x + side, y + side))
        image = cell.resize((BASE_SIDE, BASE_SIDE), Image.Resampling.BICUBIC)
        kind = rng.choice(["none", "rescan", "jpeg", "greyscale", "border"])
        add(image if kind == "none" else alter(image, kind, rng), f"distractor{d:05d}", f"d{d:05d}", book)
    with open(os.path.join(dest, "image_ids.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("id", "ppn", "filename"), *rows])
    with open(os.path.join(dest, "labels.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("id", "label"), *labels])
    summary = {
        "version": VERSION,
        "spec": asdict(spec),
        "images": len(rows),
        "groups": spec.groups,
        "group_sizes": [int(s) for s in sizes],
        "distractors": spec.distractors,
        "cells": len(pool),
    }
    with open(os.path.join(dest, "collection.json"), "w") as f:
        json.dump(summary, f)
    return json.loads(json.dumps(summary))  # as ensure_collection reads it back


def ensure_collection(spec, dest):
    """The collection at ``dest``, made unless a collection of this spec and version is there."""
    try:
        with open(os.path.join(dest, "collection.json")) as f:
            summary = json.load(f)
        if summary["version"] == VERSION and summary["spec"] == json.loads(json.dumps(asdict(spec))):
            return summary
    except (OSError, ValueError, KeyError):
        pass
    return make_collection(spec, dest)
