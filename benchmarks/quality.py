"""Retrieval quality on proxy collections: the shipped defaults beside the original method.

``python -m benchmarks.quality [--collections NAME,...] [--grid] [--configs FILE] [--work DIR]`` makes the proxy
collections of :mod:`benchmarks.proxies` (once; they are kept under ``--work``), extracts their
descriptors (one forward pass gives every layer a configuration needs; kept too), and scores
each configuration through the project's own stages: the reducer, the codebook, the histograms,
the exact neighbours, the evaluation against the collection's labels and the label-free
self-check. ``--grid`` adds each setting's alternatives, one at a time, around the shipped
defaults and around the original method; ``--configs FILE`` adds the configurations of a JSON
list (each a dict of the settings that differ from the original method). It prints a table per collection and ends with a JSON line.

Weights are ``[resnet] weights`` of luigi.cfg (random in the shipped file: no weights can be
downloaded where this project is built); a site with ImageNet weights sets them and runs the
same command to choose its own defaults.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile

import numpy as np
import scipy.sparse as sp

from pipeline import backends, compare, evaluation, store
from pipeline.backends import ModelSpec
from pipeline.blocks import Blocks
from pipeline.features import extract
from pipeline.images import MAX_PIXELS
from pipeline.model import weights_identity
from pipeline.selfcheck import Copies
from pipeline.settings import COLOURS, DESCRIPTOR_NORMS, MAX_ASSIGN, METRICS, PRECISIONS, REDUCED_NORMS, WEIGHTINGS

from . import proxies
from .common import Timer

logger = logging.getLogger("benchmarks.quality")

#: The original scripts' method: res5c_branch2c (Keras 3: conv5_block3_3_conv), StandardScaler +
#: PCA(0.97), K = 800, L1-normalised histograms, Euclidean BallTree.
ORIGINAL = {
    "layer": "conv5_block3_3_conv",
    "colour": "rgb",
    "trim": False,
    "descriptors": "raw",
    "variance": 0.97,
    "reduced": "raw",
    "size": "800",
    "assign": 1,
    "weighting": "raw",
    "power": 1.0,
    "metric": "euclidean",
    "rerank": "off",
}
#: Alternatives of each setting that ``--grid`` tries, one at a time.
ALTERNATIVES = {
    "layer": ("conv5_block3_out", "conv5_block3_3_conv", "conv4_block6_out"),
    "colour": COLOURS,
    "trim": (True, False),
    "descriptors": DESCRIPTOR_NORMS,
    "variance": (0.8, 0.9, 0.97),
    "reduced": REDUCED_NORMS,
    "size": ("200", "400", "800", "1600", "3200", "auto"),
    "assign": tuple(range(1, MAX_ASSIGN + 1)),
    "weighting": WEIGHTINGS,
    "power": (1.0, 0.5),
    "metric": METRICS,
    "rerank": ("on", "off"),
}
#: A configuration may add ``stop``: the share of the words found in the most images whose weight
#: is cut to nothing (:func:`stop_words`; a stop list would drop the longest posting lists); none by default.
NO_STOP = {"stop": 0.0}
MEASURES = ("map", "precision_at_1", "precision_at_5", "recall_at_5", "selfcheck_top1", "selfcheck_top5")
#: The rows each collection's figures record: the shipped defaults, the original method, and the
#: shipped defaults with the other ``rerank``.
RECORDED = ("shipped", "original", "shipped rerank=on", "shipped rerank=off")


def shipped():
    """The defaults a run uses: luigi.cfg over the settings' own defaults."""
    from tasks.config import codebook, histograms, images, neighbours, reduction, resnet

    return {
        "layer": resnet().layer,
        "colour": images().colour,
        "trim": images().trim,
        "descriptors": reduction().descriptors,
        "variance": reduction().variance,
        "reduced": reduction().reduced,
        "size": str(codebook().size),
        "assign": histograms().assign,
        "weighting": neighbours().weighting,
        "power": neighbours().power,
        "metric": neighbours().metric,
        "rerank": neighbours().rerank,
    }


def grid(defaults):
    """The defaults, the original method, and each setting's alternatives around both, without repeats."""
    configs = [defaults, ORIGINAL]
    for centre in (defaults, ORIGINAL):
        for key, values in ALTERNATIVES.items():
            configs += [{**centre, key: value} for value in values]
    unique = []
    for config in configs:
        if config not in unique:
            unique.append(config)
    return unique


def name_of(config, defaults):
    if config == defaults:
        return "shipped"
    if config == ORIGINAL:
        return "original"
    for centre, label in ((defaults, "shipped"), (ORIGINAL, "original")):
        changed = [k for k in config if config[k] != centre.get(k, NO_STOP.get(k))]
        if len(changed) == 1:
            return f"{label} {changed[0]}={config[changed[0]]}"
    return "original " + " ".join(f"{k}={config[k]}" for k in config if config[k] != ORIGINAL.get(k, NO_STOP.get(k)))


class Collection:
    """One proxy collection's images, labels and descriptors (8-bit coded, as the feature store keeps them)."""

    def __init__(self, spec, work):
        self.spec = spec
        self.folder = os.path.join(work, spec.name)
        self.content = os.path.join(self.folder, "content")
        self.summary = proxies.ensure_collection(spec, self.content)
        mapping = np.loadtxt(os.path.join(self.content, "image_ids.csv"), delimiter=",", skiprows=1, dtype=str)
        self.ids = mapping[:, 0].astype(np.int64)
        self.paths = [os.path.join(self.content, ppn, name) for _, ppn, name in mapping]
        self.records = mapping[:, 1]
        self.keys = np.array([f"{i}" for i in self.ids])
        self.labels = evaluation.read_labels(os.path.join(self.content, "labels.csv"))
        self.coded = {}

    def cache(self, made, weights, seed, precision):
        """The file of the descriptors made with ``made`` (:func:`made_with`), named by the collection it was
        extracted from and the feature store's format (which changes with the decoding)."""
        layer, colour, trim = made
        summary = hashlib.sha256(json.dumps(self.summary, sort_keys=True).encode()).hexdigest()[:12]
        prepared = f"{colour}-{'trim' if trim else 'whole'}"
        return os.path.join(
            self.folder,
            f"{layer}-{prepared}-{weights_identity(weights)}-{seed}-{runtime(precision)}-{summary}-f{store.FORMAT}.npz",
        )

    def extract(self, made, weights, seed, precision, batch_size):
        """Descriptors of every image made each way of ``made``, from the cache or one forward pass per image
        preparation for the missing ones."""
        missing = [m for m in made if not os.path.exists(self.cache(m, weights, seed, precision))]
        for (colour, trim), layers in by_preparation(missing).items():
            spec = model_spec(layers, colour, trim, weights, seed, precision)
            descriptors, decoded, errors = descriptors_of(self.paths, spec, batch_size, self.calibration(spec))
            if errors:
                raise RuntimeError(f"{self.spec.name}: {len(errors)} images could not be decoded: {errors}")
            for layer, d in zip(layers, descriptors):
                codes, offset, scale = store.quantize(d)
                cache = self.cache((layer, colour, trim), weights, seed, precision)
                np.savez(cache, codes=codes, offset=offset, scale=scale)
        for m in made:
            if m not in self.coded:
                with np.load(self.cache(m, weights, seed, precision)) as f:
                    self.coded[m] = (f["codes"], f["offset"], f["scale"])

    def calibration(self, spec):
        """Where a backend that calibrates keeps the calibration of ``spec`` for this collection, and
        the images it is calibrated on (:func:`descriptors_of`)."""
        name = f"{'+'.join(spec.layer)}-{spec.colour}-{'trim' if spec.trim else 'whole'}"
        folder = f"{spec.precision}-{name}-{weights_identity(spec.weights)}-{spec.seed}-{spec.calibration_images}"
        return os.path.join(self.folder, folder), self.paths

    def blocks(self, made):
        return CodedBlocks(*self.coded[made])


def made_with(config):
    """What a configuration's descriptors are made with: (layer, colour, trim)."""
    return config["layer"], config["colour"], config["trim"]


def by_preparation(made):
    """(colour, trim) -> the layers of ``made`` extracted with that image preparation."""
    layers = {}
    for layer, colour, trim in sorted(set(made)):
        layers.setdefault((colour, trim), []).append(layer)
    return layers


def runtime(precision):
    """The name of what computes at ``precision`` (bfloat16 by OpenVINO: descriptors cached from
    another runtime are not taken)."""
    return "-".join(map(str, ModelSpec(precision=precision).backend().identity().values())) or precision


def model_spec(layers, colour, trim, weights, seed, precision):
    """The ModelSpec of one forward pass over ``layers`` (calibrated, at int8, on luigi.cfg's number of images)."""
    from tasks.config import resnet

    return ModelSpec(weights, tuple(layers), seed, precision, colour, trim, resnet().calibration_images)


def descriptors_of(paths, spec, batch_size, calibration):
    """One forward pass over ``paths``: (descriptors of each layer, decoded, errors) as :func:`extract` gives them.
    ``calibration`` = (folder, the collection's image paths): a backend that calibrates (int8) does so once, on a
    seeded sample of the collection, so that the collection and its altered copies go through the same model."""
    folder, collection_paths = calibration
    spec.backend().calibrate(folder, collection_paths, MAX_PIXELS)
    with backends.extractor(spec, folder, batch_size) as extractor:
        descriptors, decoded, errors = extract(extractor, paths)
    return (
        (descriptors if isinstance(descriptors, list) else [descriptors]),
        decoded,
        errors,
    )  # Keras: one output, no list


class CodedBlocks(Blocks):
    """8-bit coded descriptors in memory, decoded block by block as the feature store's are."""

    def __init__(self, codes, offset, scale):
        super().__init__(len(codes))
        self.codes, self.offset, self.scale = codes, offset, scale

    def read(self, positions):
        return store.dequantize(self.codes[positions], self.offset[positions], self.scale[positions])

    def n_local(self):
        return self.codes.shape[1]


def stop_words(counts, weights, share):
    """``weights`` with the ``share`` of the words found in the most images (of ``counts``) set to 1,
    the least integer weight (tf-idf weights are scaled by IDF_SCALE): as good as dropped, while
    an image whose every word is stopped keeps a histogram to compare."""
    stopped = int(round(share * len(weights)))
    if stopped == 0:
        return weights
    in_images = np.bincount(sp.csr_matrix(counts).indices, minlength=len(weights))
    weights = np.array(weights, copy=True)
    weights[np.argsort(-in_images, kind="stable")[:stopped]] = 1
    return weights


class Stopped:
    """A codebook whose word weights :func:`stop_words` cuts by ``share`` (none for 0)."""

    def __init__(self, codebook, counts, share):
        self.codebook, self.counts, self.share = codebook, counts, share

    def word_weights(self, weighting, assign):
        return stop_words(self.counts, self.codebook.word_weights(weighting, assign), self.share)


class Scorer(compare.Scorer):
    """The pipeline's scorer (``pipeline.compare.Scorer``) on one proxy collection, its records
    and labels, with the benchmark's stop lists (a configuration's ``stop``)."""

    def __init__(self, collection, copies=None, copy_descriptors=None, sample_size=200_000, seed=0):
        super().__init__(
            collection.blocks,
            collection.ids,
            collection.keys,
            records=collection.records,
            labels=collection.labels,
            copies=copies,
            copy_features=(copy_descriptors or {}).__getitem__,
            sample_size=sample_size,
            seed=seed,
        )
        self.c = collection

    def word_weights(self, config, codebook, counts):
        return Stopped(codebook, counts, config.get("stop", 0.0))

    def score(self, config):
        return {**NO_STOP, **super().score(config)}


def prepared(spec, configs, args, scratch):
    """The collection of ``spec`` with its descriptors for ``configs``, and a Scorer over it (with
    the self-check's altered copies, written under ``scratch``, when ``args.selfcheck``)."""
    with Timer() as made:
        collection = Collection(spec, args.work)
    kinds = sorted({made_with(c) for c in configs})
    with Timer() as extracted:
        collection.extract(kinds, args.weights, args.seed, args.precision, args.batch_size)
    copies, copy_descriptors = None, {}
    if args.selfcheck:
        copies = Copies(collection.paths, scratch, sample=args.selfcheck, seed=0)
        for (colour, trim), layers in by_preparation(kinds).items():
            spec = model_spec(layers, colour, trim, args.weights, args.seed, args.precision)
            descriptors, decoded, errors = descriptors_of(
                copies.paths, spec, args.batch_size, collection.calibration(spec)
            )
            for layer, d in zip(layers, descriptors):
                copy_descriptors[layer, colour, trim] = (d, decoded, errors)
    scorer = Scorer(collection, copies, copy_descriptors, seed=args.kmeans_seed)
    return scorer, {"make_seconds": round(made.seconds, 1), "extract_seconds": round(extracted.seconds, 1)}


def run_collection(spec, configs, defaults, args):
    """Rows of every configuration on one collection."""
    with tempfile.TemporaryDirectory(prefix="quality-") as scratch:
        scorer, seconds = prepared(spec, configs, args, scratch)
        collection = scorer.c
        rows = []
        for config in configs:
            row = scorer.score(config)
            row["name"] = name_of(config, defaults)
            rows.append(row)
            logger.info("%s %s: %s", spec.name, row["name"], {k: row.get(k) for k in MEASURES})
    info = {
        "collection": spec.name,
        "images": collection.summary["images"],
        "groups": collection.summary["groups"],
        "distractors": collection.summary["distractors"],
        **seconds,
    }
    return info, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--collections",
        default=",".join(s.name for s in proxies.COLLECTIONS),
        help="collections to score (default the five; also "
        + ", ".join(s.name for s in proxies.EXTRA + proxies.BOOKS)
        + ")",
    )
    parser.add_argument("--grid", action="store_true", help="also each setting's alternatives, one at a time")
    parser.add_argument("--configs", help="also the configurations of this JSON file (a list of settings dicts)")
    parser.add_argument(
        "--work", default=os.path.join("artifacts", "bench-quality"), help="where collections and descriptors are kept"
    )
    parser.add_argument("--selfcheck", type=int, default=50, help="images altered for the self-check (0: none)")
    parser.add_argument(
        "--kmeans-seed",
        type=int,
        default=0,
        help="seed of the codebooks' sample and k-means start: another one shows how far the figures move "
        "with the same descriptors",
    )
    parser.add_argument("--json", help="also write every row to this JSON file")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="what the model computes in (default: [resnet] precision, auto decided on this machine)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tasks.config import precision, resnet

    args.weights, args.seed, args.batch_size = resnet().weights, resnet().seed, resnet().batch_size
    args.precision = precision().precision if args.precision in (None, "auto") else args.precision
    names = [n.strip() for n in args.collections.split(",") if n.strip()]
    specs = [s for s in proxies.COLLECTIONS + proxies.EXTRA + proxies.BOOKS if s.name in names]
    unknown = set(names) - {s.name for s in specs}
    problems = [f"no collection {n!r}" for n in sorted(unknown)] + proxies.missing_sources(specs)
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    defaults = shipped()
    flipped = {**defaults, "rerank": "off" if defaults["rerank"] == "on" else "on"}  # the verification's effect
    configs = grid(defaults) if args.grid else [defaults, ORIGINAL, flipped]
    if args.configs:
        with open(args.configs) as f:
            configs += [{**ORIGINAL, **c} for c in json.load(f) if {**ORIGINAL, **c} not in configs]
    results, figures = [], {}
    with Timer() as whole:
        for spec in specs:
            info, rows = run_collection(spec, configs, defaults, args)
            results.append({**info, "rows": rows})
            by_name = {r["name"]: r for r in rows}
            print(
                f"\n## {spec.name}: {info['images']} images, {info['groups']} groups, {info['distractors']} distractors "
                f"(weights {args.weights}, precision {args.precision})"
            )
            print(compare.table(sorted(rows, key=lambda r: -r["map"])))
            figures[spec.name] = {
                who: {m: round(by_name[who][m], 4) for m in MEASURES if m in by_name[who]}
                for who in RECORDED
                if who in by_name
            }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"weights": args.weights, "defaults": defaults, "collections": results}, f, indent=1)
    wins = {n: f["shipped"]["map"] >= f["original"]["map"] for n, f in figures.items()}
    mean = {who: round(float(np.mean([f[who]["map"] for f in figures.values()])), 4) for who in ("shipped", "original")}
    print(
        f"\nshipped defaults {defaults}\nmAP, mean over collections: shipped {mean['shipped']}, original {mean['original']}; "
        f"shipped >= original on {sum(wins.values())} of {len(wins)}"
    )
    print(
        json.dumps(
            {
                "bench": "quality",
                "weights": args.weights,
                "precision": args.precision,
                "kmeans_seed": args.kmeans_seed,
                "seconds": round(whole.seconds, 1),
                "defaults": defaults,
                "mean_map": mean,
                "shipped_beats_original": wins,
                "collections": figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
