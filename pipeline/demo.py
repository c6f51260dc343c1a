"""The bundled demo collection: near-duplicate groups made from the sample photos of scikit-image
and scikit-learn.

``python -m pipeline.demo collection content`` writes ``content/PPN<id>/<file>.jpg``,
``content/image_ids.csv`` and ``content/labels.csv``; the same seed gives the same files. ``python -m pipeline.demo cms
artifacts/demo-cms.sqlite`` makes the demo's CMS database from that CSV file.
"""

import argparse
import contextlib
import csv
import io
import os
import shutil
import sqlite3

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

#: (name, loader) of the base photos; each becomes a group of near-duplicates.
BASES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "text",
    "clock",
    "coins",
    "retina",
    "brick",
    "colorwheel",
    "china",
    "flower",
)
VARIANTS = ("crop", "rescan", "greyscale", "border", "small")
MAX_SIDE = 480


def base_image(name):
    """Load one sample photo as an RGB PIL image no larger than MAX_SIDE."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        pixels = getattr(skimage.data, name)()
    image = Image.fromarray(np.asarray(pixels)).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return image


def make_variant(image, kind, rng):
    """An altered copy as a digitization workflow makes them: a crop, a rescan, a greyscale copy,
    a copy with a scanned-page border, or a small recompressed copy."""
    w, h = image.size
    if kind == "crop":
        cw, ch = int(w * 0.8), int(h * 0.8)
        x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        return image.crop((x, y, x + cw, y + ch))
    if kind == "rescan":
        turned = image.rotate(float(rng.uniform(-3, 3)), resample=Image.Resampling.BILINEAR, fillcolor=(250, 248, 240))
        return ImageEnhance.Brightness(turned.filter(ImageFilter.GaussianBlur(0.8))).enhance(
            float(rng.uniform(1.05, 1.15))
        )
    if kind == "greyscale":
        return ImageOps.grayscale(image)
    if kind == "border":
        margin = max(8, int(0.08 * max(w, h)))
        framed = ImageOps.expand(image, border=2, fill=(40, 40, 40))
        return ImageOps.expand(framed, border=margin, fill=(236, 230, 214))
    if kind == "small":
        small = image.resize((w // 2, h // 2), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=40)
        return Image.open(buffer)
    raise ValueError(f"unknown variant {kind!r}")


def make_collection(dest, seed=0, bases=BASES, variants_per_base=2, n_records=8):
    """Write a demo collection into ``dest`` (replacing the PPN folders and mapping there).

    Each base photo and ``variants_per_base`` altered copies are spread over different
    records, as copies of one print in several books are. One extra image has no mapping row
    and one mapping row has no file, so the run shows how it reports both. ``labels.csv``
    (id,label) names each image's base photo, for the evaluation.

    Returns
    -------
    groups : dict of str to list of int
        Base name -> database IDs of its group.
    """
    rng = np.random.default_rng(seed)
    records = [f"PPN{600000000 + 7919 * (i + 1)}" for i in range(n_records)]
    for name in os.listdir(dest) if os.path.isdir(dest) else []:
        if name.startswith("PPN"):
            shutil.rmtree(os.path.join(dest, name))
    counters = dict.fromkeys(records, 0)
    rows, groups = [], {}
    ids = iter(rng.permutation(np.arange(1001, 1001 + len(bases) * (variants_per_base + 1) + 1)).tolist())

    def save(image, record):
        counters[record] += 1
        filename = f"{counters[record]:08d}.jpg"
        os.makedirs(os.path.join(dest, record), exist_ok=True)
        image.save(os.path.join(dest, record, filename), "JPEG", quality=88)
        return filename

    for b, name in enumerate(bases):
        image = base_image(name)
        kinds = [VARIANTS[(b + j) % len(VARIANTS)] for j in range(variants_per_base)]
        copies = [image, *(make_variant(image, kind, rng) for kind in kinds)]
        homes = rng.choice(records, size=len(copies), replace=False)
        groups[name] = []
        for copy, record in zip(copies, homes):
            image_id = next(ids)
            rows.append((image_id, record, save(copy, record)))
            groups[name].append(image_id)
    save(make_variant(base_image(bases[0]), "crop", rng), records[0])  # on disk, not in the CMS
    rows.append((next(ids), records[-1], "99999999.jpg"))  # in the CMS, not on disk
    with open(os.path.join(dest, "image_ids.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "ppn", "filename"])
        writer.writerows(sorted(rows))
    with open(os.path.join(dest, "labels.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows(sorted((i, name) for name, members in groups.items() for i in members))
    return groups


def make_cms(database, csv_path):
    """Make the demo CMS: an SQLite database whose table ``images`` (id, ppn, filename) holds
    the rows of the demo's ID mapping. An existing database is left as it is, as a CMS would be.

    Returns
    -------
    created : bool
    """
    if os.path.exists(database):
        return False
    os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    with open(csv_path, newline="") as f:
        rows = [(int(r["id"]), r["ppn"], r["filename"]) for r in csv.DictReader(f)]
    tmp = f"{database}.tmp"
    with contextlib.closing(sqlite3.connect(tmp)) as db, db:
        db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, ppn TEXT NOT NULL, filename TEXT NOT NULL)")
        db.executemany("INSERT INTO images VALUES (?, ?, ?)", rows)
    os.replace(tmp, database)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collection = commands.add_parser("collection", help="write the demo collection")
    collection.add_argument("dest", nargs="?", default="content", help="folder to write the collection into")
    collection.add_argument("--seed", type=int, default=0)
    cms = commands.add_parser("cms", help="make the demo CMS database from the collection's ID mapping")
    cms.add_argument("database", help="SQLite file to create")
    cms.add_argument("--csv", default="content/image_ids.csv", help="the ID mapping to put in it")
    args = parser.parse_args()
    if args.command == "collection":
        groups = make_collection(args.dest, seed=args.seed)
        print(f"wrote {sum(map(len, groups.values()))} mapped images in {len(groups)} groups to {args.dest}")
    elif make_cms(args.database, args.csv):
        print(f"made the demo CMS database {args.database} (table images: id, ppn, filename)")


if __name__ == "__main__":
    main()
