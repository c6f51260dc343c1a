"""The label-free self-check: altered copies of a sample of the collection, queried against it.

A copy of a collection image that was cropped, rescaled, turned, made grey, recompressed or
given a scanned page's border should find its original first. How often it does, night after
night, says whether the neighbours still find near-duplicates, with no labels from anyone.
"""

import io
import logging
import os

import numpy as np
from PIL import Image, ImageOps

from .blocks import sample_images
from .errors import ImageError
from .features import extract
from .histograms import word_histograms
from .images import reason_of
from .neighbours import nearest_neighbours, query_neighbours
from .search import rerank as rerank_lists

#: The share of the hard negatives whose verification score may reach the threshold: the copies'
#: pairwise precision on the proxy collections was 0.95 to 0.98 there on three of four, 0.73 to
#: 0.93 at 0.001 (``python -m benchmarks.copies``, docs/quality.md).
FALSE_POSITIVE_RATE = 0.0001
#: A copy's original's nearest images that are no hard negatives of the copy (they may show the same picture).
HARD_SKIP = 10

logger = logging.getLogger(__name__)

ALTERATIONS = ("crop", "rescale", "rotation", "greyscale", "jpeg", "border")
#: Longest side the originals are read at: the model sees 224 x 224, so this loses nothing.
WORKING_SIDE = 1024
PAPER = (236, 230, 214)


def alter(image, kind, rng):
    """An altered copy of an RGB PIL image.

    crop: 75 % of each side at a random place; rescale: to 40 % of the size; rotation: 2 to
    5 degrees either way, corners filled with paper; greyscale; jpeg: recompressed at quality
    25; border: a thin dark frame line and a paper margin of 8 % of the longer side.
    """
    w, h = image.size
    if kind == "crop":
        cw, ch = max(1, int(w * 0.75)), max(1, int(h * 0.75))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch))
    if kind == "rescale":
        return image.resize((max(1, int(w * 0.4)), max(1, int(h * 0.4))), Image.Resampling.BILINEAR)
    if kind == "rotation":
        angle = float(rng.uniform(2, 5)) * (1 if rng.integers(0, 2) else -1)
        return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=PAPER)
    if kind == "greyscale":
        return ImageOps.grayscale(image).convert("RGB")
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=25)
        return Image.open(buffer).convert("RGB")
    if kind == "border":
        margin = max(4, int(0.08 * max(w, h)))
        return ImageOps.expand(ImageOps.expand(image, border=2, fill=(40, 40, 40)), border=margin, fill=PAPER)
    raise ValueError(f"unknown alteration {kind!r}")


def write_altered_copies(sources, dest, seed=0, kinds=ALTERATIONS, max_pixels=None):
    """Write one altered copy per kind of each source file into ``dest`` (JPEG, quality 90).

    Returns
    -------
    copies : list of (source position, kind, path)
    failed : dict of int to str
        Source position -> reason, for sources that could not be read.
    """
    copies, failed = [], {}
    for s, source in enumerate(sources):
        rng = np.random.default_rng([seed, s])
        try:
            with Image.open(source) as image:
                if max_pixels is not None and image.size[0] * image.size[1] > max_pixels:
                    raise ImageError(f"{image.size[0]} x {image.size[1]} pixels is more than {max_pixels}")
                image.draft("RGB", (WORKING_SIDE, WORKING_SIDE))
                original = ImageOps.exif_transpose(image).convert("RGB")
            original.thumbnail((WORKING_SIDE, WORKING_SIDE))
        except (OSError, ValueError, SyntaxError, EOFError, ImageError) as exc:
            failed[s] = reason_of(exc, source)
            continue
        for kind in kinds:
            path = os.path.join(dest, f"{s:06d}-{kind}.jpg")
            alter(original, kind, rng).save(path, "JPEG", quality=90)
            copies.append((s, kind, path))
    return copies, failed


class Copies:
    """Altered copies of a seeded sample of the collection, written as JPEG files.

    Parameters
    ----------
    image_paths : sequence of str
        File of each collection image, in the collection's order.
    dest : str
        An empty folder for the copies.
    sample : int
        Collection images to alter (all when fewer).
    seed : int
        Seed of the sample and of the alterations.

    Attributes
    ----------
    chosen : ndarray of int64
        Positions of the sampled images in the collection.
    paths, originals, kinds : list
        Each copy's file, its original's position in the collection and its alteration.
    failed : dict of int to str
        Collection position -> reason, for sampled images that could not be read.
    """

    def __init__(self, image_paths, dest, sample=50, seed=0):
        self.n_images = len(image_paths)
        self.chosen = sample_images(self.n_images, sample, seed)
        copies, failed = write_altered_copies([image_paths[p] for p in self.chosen], dest, seed)
        self.paths = [path for _, _, path in copies]
        self.originals = [int(self.chosen[s]) for s, _, _ in copies]
        self.kinds = [kind for _, kind, _ in copies]
        self.failed = {int(self.chosen[s]): reason for s, reason in failed.items()}

    def extract(self, extractor):
        """The copies' descriptors: (descriptors, decoded positions, errors), as :func:`pipeline.features.extract`."""
        return extract(extractor, self.paths)

    def score(self, found, decoded, errors, ids, distances=None):
        """How often the copies found their original.

        Parameters
        ----------
        found : ndarray of shape (len(decoded), k), int
            Collection positions of the neighbours of each decoded copy, nearest first.
        decoded, errors
            From :meth:`extract`.
        ids : ndarray
            Database IDs of the collection's images.
        distances : ndarray of shape (len(decoded), k), optional
            The distances of ``found``.

        Returns
        -------
        dict with ``images`` (sampled), ``queries`` (copies queried), ``top1`` and ``top5``
        (share of the copies whose original is the first neighbour, or within the first k),
        ``chance_top1`` and ``chance_top5`` (the same for neighbours drawn at random),
        ``per_alteration`` (``queries``, ``top1``, ``top5`` of each kind), ``failed``
        (database ID -> reason, for sampled images or copies that could not be read) and, with
        ``distances``, ``first_distances``: the distance of each copy that found its original
        first to it, increasing (what ``pipeline.copies`` takes its threshold from).
        """
        k = found.shape[1] if len(decoded) else 5
        originals = np.array([self.originals[c] for c in decoded], dtype=np.int64)
        kinds = np.array([self.kinds[c] for c in decoded], dtype=str)
        found = np.asarray(found, dtype=np.int64).reshape(len(decoded), -1)
        first = found[:, 0] == originals if len(decoded) else np.zeros(0, dtype=bool)
        within = (found == originals[:, None]).any(axis=1)

        def rates(mask):
            return {
                "queries": int(mask.sum()),
                "top1": round(float(first[mask].mean()), 4) if mask.any() else 0.0,
                "top5": round(float(within[mask].mean()), 4) if mask.any() else 0.0,
            }

        problems = {str(ids[p]): reason for p, reason in self.failed.items()}
        problems.update({str(ids[self.originals[c]]): f"{self.kinds[c]} copy: {r}" for c, r in errors.items()})
        result = {
            "images": len(self.chosen),
            **rates(np.ones(len(decoded), dtype=bool)),
            "chance_top1": round(1 / self.n_images, 6),
            "chance_top5": round(min(k, self.n_images) / self.n_images, 6),
            "per_alteration": {kind: rates(kinds == kind) for kind in ALTERATIONS},
            "failed": problems,
        }
        if distances is not None:
            first_distances = np.asarray(distances, dtype=np.float64).reshape(len(decoded), -1)[first, 0]
            result["first_distances"] = np.sort(first_distances).tolist()
        return result


def verification_threshold(data, verifier, found, originals, rate=FALSE_POSITIVE_RATE):
    """The score that ``rate`` of the self-check's hard negatives reach: the pairs of each copy with
    its short list ``found`` but its original and the original's HARD_SKIP nearest (another view
    of the same picture is no negative). The copies are ``verifier``'s images after those of the
    collection (``data``, its WeightedHistograms).

    Returns
    -------
    threshold : float
        The least score at or above the (1 - rate) quantile of the negatives' scores (inf when there are none).
    negatives : int
    """
    n = len(data)
    unique = np.unique(originals)
    near = nearest_neighbours(data, min(HARD_SKIP, n - 1), rows=unique)[0] if len(unique) else None
    skip = {int(o): {int(o), *near[i].tolist()} for i, o in enumerate(unique)}
    hard = [(n + q, int(x)) for q in range(len(found)) for x in found[q] if int(x) not in skip[int(originals[q])]]
    pairs = np.array(hard, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return np.inf, 0
    scores = verifier.scores(pairs[:, 0], pairs[:, 1:])[0][:, 0]
    return float(np.quantile(scores, 1 - rate, method="higher")), len(pairs)


def check_copies(copies, decoded, errors, ids, data, counts, verifier, k=5, candidates=50, rerank=False):
    """How often the altered copies found their original, by distance and re-ranked (see :func:`self_check`).

    Parameters
    ----------
    copies : Copies
    decoded, errors
        From :meth:`Copies.extract`.
    ids : ndarray
        Database IDs of the collection's images.
    data : pipeline.weighting.WeightedHistograms
        The collection, weighted and compared as its lists are.
    counts : sparse matrix of shape (len(decoded), K)
        The copies' word counts (``pipeline.query.word_counts``).
    verifier : pipeline.verify.Verifier
        Over the collection's images' words and, after them, the copies'.
    k, candidates, rerank
        As :func:`self_check`.
    """
    n, width = len(data), max(k, min(candidates, len(data) - 1))
    if decoded:
        found, distances = query_neighbours(data, counts, k=width)
        originals = np.array([copies.originals[c] for c in decoded], dtype=np.int64)
        scores = verifier.scores(n + np.arange(len(decoded)), found)[0]
        threshold, negatives = verification_threshold(data, verifier, found, originals)
        ranked = rerank_lists(found, distances, scores >= threshold, k)
    else:
        found = distances = np.empty((0, width), dtype=np.int64)
        threshold, negatives, ranked = np.inf, 0, (found[:, :k], distances[:, :k])
    by_distance = copies.score(found[:, :k], decoded, errors, ids, distances[:, :k])
    reranked = copies.score(*ranked[:1], decoded, errors, ids)
    result, other = (reranked, by_distance) if rerank else (by_distance, reranked)
    result["first_distances"] = by_distance.get("first_distances", [])  # the copies' threshold: by distance
    result["reranked" if not rerank else "by_distance"] = {
        name: other[name] for name in ("top1", "top5", "per_alteration")
    }
    result["verification"] = {
        "threshold": threshold if np.isfinite(threshold) else None,
        "rate": FALSE_POSITIVE_RATE,
        "hard_negatives": negatives,
        "candidates": width,
    }
    return result


def self_check(index, extractor, image_paths, dest, sample=50, seed=0, k=5, candidates=50, rerank=False):
    """Query altered copies of a seeded sample of the collection and count how often each finds its original.

    Each copy's short list of ``candidates`` nearest is verified (``pipeline.verify``), and the
    verification's threshold is set from the hard negatives among them
    (:func:`verification_threshold`); the counts are those of the lists re-ranked with it
    (``rerank``), or of the lists by distance, and the other's beside them.

    Parameters
    ----------
    index : SimilarityIndex
        Read from the run's histograms (:meth:`SimilarityIndex.of_run`).
    extractor : DescriptorExtractor
        Over the model the collection's descriptors were made with.
    image_paths, dest, sample, seed
        As :class:`Copies`.
    k : int
        A copy counts as found within k when its original is among its first k neighbours.
    candidates : int
        The short list's length.
    rerank : bool
        Whether the run's lists are re-ranked (``[neighbours] rerank``).

    Returns
    -------
    dict, see :meth:`Copies.score`, with ``verification``: the ``threshold``, the ``rate`` and
    the ``hard_negatives`` it was set from; and ``by_distance`` or ``reranked``: the counts of
    the order the run's lists do not have.
    """
    copies = Copies(image_paths, dest, sample, seed)
    descriptors, decoded, errors = copies.extract(extractor)
    words = index.words_of(descriptors) if decoded else None
    counts = word_histograms(words, index.codebook.size) if decoded else None
    verifier = index.verifier(words) if decoded else None
    ids = index.images.ids
    result = check_copies(copies, decoded, errors, ids, index.histograms, counts, verifier, k, candidates, rerank)
    threshold, negatives = result["verification"]["threshold"], result["verification"]["hard_negatives"]
    logger.info(
        "self-check: %d altered copies of %d images found their original first in %.1f%% and within %d in %.1f%% "
        "(chance %.2f%% / %.2f%%)",
        result["queries"],
        result["images"],
        100 * result["top1"],
        k,
        100 * result["top5"],
        100 * result["chance_top1"],
        100 * result["chance_top5"],
    )
    logger.info(
        "self-check: verification threshold %s from %d hard negatives (false-positive rate %s); original first %.1f%% "
        "re-ranked, %.1f%% by distance",
        threshold,
        negatives,
        FALSE_POSITIVE_RATE,
        100 * (result if rerank else result["reranked"])["top1"],
        100 * (result["by_distance"] if rerank else result)["top1"],
    )
    return result
