"""Retrieval quality over a grid of settings: layer, codebook size, word weighting and distance,
each step reusing what the settings before it allow."""

import logging
import time

from . import evaluation
from .codebook import check_size, fit_codebook
from .histograms import compute_histograms
from .neighbours import Counts, query_neighbours, sparse_neighbours
from .query import word_counts
from .reduction import Reducer
from .store import sample_images

logger = logging.getLogger(__name__)

#: Columns of the comparison table: (key, heading, format).
COLUMNS = (
    ("layer", "layer", "{}"),
    ("codebook", "K", "{}"),
    ("weighting", "weighting", "{}"),
    ("metric", "metric", "{}"),
    ("map", "mAP", "{:.3f}"),
    ("precision_at_1", "P@1", "{:.3f}"),
    ("precision_at_5", "P@5", "{:.3f}"),
    ("recall_at_5", "R@5", "{:.3f}"),
    ("selfcheck_top1", "self-check top-1", "{:.3f}"),
    ("selfcheck_top5", "self-check top-5", "{:.3f}"),
)


def compare_layer(
    blocks, index, layer, sizes, weightings, metrics, labels=None, copies=None, copy_features=None,
    variance=0.97, sample_images_=20_000, sample_size=200_000, seed=0, k=5,
):  # fmt: skip
    """Score every (size, weighting, metric) on one layer's descriptors.

    The reducer is fitted once for the layer, the codebook and histograms once per size,
    and the neighbours once per (size, weighting, metric), as a run with those settings
    would make them.

    Parameters
    ----------
    blocks : Blocks
        The layer's descriptors of the collection's images.
    index : FeatureIndex
        The images (database IDs) in the order of ``blocks``.
    layer : str
        Named in the rows.
    sizes : sequence of int or "auto"
        Codebook sizes; one that gives the same number of words as another is made once.
    weightings, metrics : sequence of str
    labels : dict of str to str, optional
        Database ID -> label, for precision, recall and mAP (:func:`pipeline.evaluation.evaluate`).
    copies : Copies, optional
        Altered copies of a sample of the collection, for the self-check.
    copy_features : (descriptors, decoded, errors), optional
        The copies' descriptors at this layer, from :meth:`Copies.extract`.
    variance, sample_images_, sample_size, seed
        The reducer's and codebook's settings, as ``[reduction]`` and ``[codebook]``.
    k : int

    Returns
    -------
    rows : list of dict
        ``layer``, ``size`` (the number of words), ``codebook`` (the same, "(auto)" added when
        ``size = auto`` gives it), ``weighting``, ``metric``, ``seconds`` and,
        with labels, ``queries``, ``precision_at_1``, ``precision_at_5``, ``recall_at_5``,
        ``map``; with copies, ``selfcheck_top1`` and ``selfcheck_top5``.
    """
    started = time.monotonic()
    reducer = Reducer(variance).fit(blocks.subset(sample_images(blocks.n_images, sample_images_, seed)))
    shared = time.monotonic() - started
    rows = []
    words = {}  # number of words -> the settings that give it ("auto" among them, maybe)
    for size in sizes:
        words.setdefault(check_size(size, blocks.n_images, blocks.n_local(), sample_size), []).append(str(size))
    for size, settings in words.items():
        started = time.monotonic()
        codebook = fit_codebook(blocks, reducer, size=size, sample_size=sample_size, random_state=seed)
        counts, _ = compute_histograms(blocks, index.keys, reducer, codebook)
        if copies is not None:
            descriptors, decoded, errors = copy_features
            copy_counts = word_counts(descriptors, reducer, codebook)  # once per codebook
        per_size = time.monotonic() - started
        for weighting in weightings:
            for metric in metrics:
                started = time.monotonic()
                data = Counts(counts, blocks.n_local(), index.ids, weighting, metric)
                nearest, _ = sparse_neighbours(data, k=k)
                row = {
                    "layer": layer, "size": size, "codebook": f"{size} (auto)" if "auto" in settings else str(size),
                    "weighting": weighting, "metric": metric,
                }  # fmt: skip
                if labels is not None:
                    scores = evaluation.evaluate(index.ids, index.ids[nearest], labels, k=k)
                    row.update({key: value for key, value in scores.items() if key != "per_label"})
                if copies is not None:
                    found = query_neighbours(data, copy_counts, k=k)[0]
                    check = copies.score(found, decoded, errors, index.ids)
                    row.update(selfcheck_top1=check["top1"], selfcheck_top5=check["top5"])
                row["seconds"] = round(shared + per_size + time.monotonic() - started, 2)
                rows.append(row)
                logger.info("compared %s", row)
    return rows


def sort_rows(rows):
    """Best first: by mAP, then precision@1 (with labels), else by the self-check's top-1, then top-5."""
    keys = ("map", "precision_at_1", "selfcheck_top1", "selfcheck_top5")
    return sorted(rows, key=lambda r: tuple(-r.get(key, 0.0) for key in keys))


def table(rows):
    """The rows as a Markdown table, in the given order, with the columns they have."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(heading for _, heading, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if fmt == "{}" else "---:" for _, _, fmt in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) if key in row else "" for key, _, fmt in columns) + " |")
    return "\n".join(lines)

