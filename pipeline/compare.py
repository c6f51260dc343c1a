"""Retrieval quality over a grid of settings: descriptors, descriptor normalisation, codebook size,
assignment, word weighting, power and distance, each step reusing what the settings before it allow."""

import logging
import time

from . import evaluation
from .blocks import sample_images
from .codebook import DEFAULT_SAMPLE_SIZE, check_size, fit_codebook
from .histograms import DEFAULT_ASSIGN, compute_histograms
from .neighbours import query_neighbours, sparse_neighbours
from .query import word_counts
from .reduction import DEFAULT_DESCRIPTORS, DEFAULT_REDUCED, DEFAULT_SAMPLE_IMAGES, DEFAULT_VARIANCE, Reducer
from .verdicts import verdict_scores
from .weighting import DEFAULT_POWER, Distance, WeightedHistograms

logger = logging.getLogger(__name__)

#: Columns of the comparison table: (key, heading, format).
COLUMNS = (
    ("layer", "layer", "{}"),
    ("colour", "colour", "{}"),
    ("trim", "trim", "{}"),
    ("descriptors", "descriptors", "{}"),
    ("reduced", "reduced", "{}"),
    ("codebook", "K", "{}"),
    ("assign", "assign", "{}"),
    ("weighting", "weighting", "{}"),
    ("power", "power", "{}"),
    ("metric", "metric", "{}"),
    ("map", "mAP", "{:.3f}"),
    ("precision_at_1", "P@1", "{:.3f}"),
    ("precision_at_5", "P@5", "{:.3f}"),
    ("recall_at_5", "R@5", "{:.3f}"),
    ("verdict_right_found", "verdicts: right found", "{:.3f}"),
    ("verdict_judged_right", "verdicts: judged right", "{:.3f}"),
    ("selfcheck_top1", "self-check top-1", "{:.3f}"),
    ("selfcheck_top5", "self-check top-5", "{:.3f}"),
)


def compare_layer(
    blocks,
    index,
    made_with,
    sizes,
    weightings,
    metrics,
    labels=None,
    verdicts=None,
    copies=None,
    copy_features=None,
    variance=DEFAULT_VARIANCE,
    sample_images_=DEFAULT_SAMPLE_IMAGES,
    sample_size=DEFAULT_SAMPLE_SIZE,
    seed=0,
    k=5,
    descriptors=(DEFAULT_DESCRIPTORS,),
    reduced=(DEFAULT_REDUCED,),
    assigns=(DEFAULT_ASSIGN,),
    powers=(DEFAULT_POWER,),
):
    """Score every combination of the settings on one set of descriptors (one layer, one image preparation).

    The reducer is fitted once per descriptor normalisation, the codebook once per
    (normalisation, reduced normalisation, size), the histograms once per assignment, and the
    neighbours once per (weighting, power, metric), as a run with those settings would make them.

    Parameters
    ----------
    blocks : Blocks
        The descriptors of the collection's images.
    index : FeatureIndex
        The images (database IDs) in the order of ``blocks``.
    made_with : dict
        What the descriptors were made with (``layer``, ``colour``, ``trim``), the first columns of each row.
    sizes : sequence of int or "auto"
        Codebook sizes; one that gives the same number of words as another is made once.
    weightings, metrics : sequence of str
    labels : dict of str to str, optional
        Database ID -> label, for precision, recall and mAP (:func:`pipeline.evaluation.evaluate`).
    verdicts : pipeline.verdicts.Verdicts, optional
        The site's verdicts, for the share of pairs judged right that the lists find and the
        share of their judged entries judged right (:func:`pipeline.verdicts.verdict_scores`).
    copies : Copies, optional
        Altered copies of a sample of the collection, for the self-check.
    copy_features : (descriptors, decoded, errors), optional
        The copies' descriptors, made as ``blocks``' were, from :meth:`Copies.extract`.
    variance, sample_images_, sample_size, seed
        The reducer's and codebook's settings, as ``[reduction]`` and ``[codebook]``.
    k : int
    descriptors, reduced, assigns, powers : sequences
        Values of ``[reduction] descriptors``, ``[reduction] reduced``, ``[histograms] assign``
        and ``[neighbours] power``.

    Returns
    -------
    rows : list of dict
        ``made_with``'s keys, ``descriptors``, ``reduced``, ``size`` (the number of words), ``codebook`` (the
        same, "(auto)" added when ``size = auto`` gives it), ``assign``, ``weighting``, ``power``,
        ``metric``, ``seconds`` and,
        with labels, ``queries``, ``precision_at_1``, ``precision_at_5``, ``recall_at_5``,
        ``map``; with verdicts, ``verdict_pairs``, ``verdict_right_found`` and ``verdict_judged_right``
        (where there is something to count); with copies, ``selfcheck_top1`` and ``selfcheck_top5``.
    """
    rows = []
    words = {}  # number of words -> the settings that give it ("auto" among them, maybe)
    for size in sizes:
        words.setdefault(check_size(size, blocks.n_images, blocks.n_local(), sample_size), []).append(str(size))
    sample = blocks.subset(sample_images(blocks.n_images, sample_images_, seed))
    for descriptor_norm in descriptors:
        started = time.monotonic()
        fitted = Reducer(variance, descriptor_norm).fit(sample)
        for reduced_norm in reduced:
            reducer = fitted.with_reduced(reduced_norm)
            for size, settings in words.items():
                codebook = fit_codebook(blocks, reducer, size=size, sample_size=sample_size, random_state=seed)
                for assign in assigns:
                    counts, _ = compute_histograms(blocks, index.keys, reducer, codebook, assign=assign)
                    if copies is not None:
                        copy_descriptors, decoded, errors = copy_features
                        copy_counts = word_counts(copy_descriptors, reducer, codebook, assign)  # once per codebook
                    for weighting in weightings:
                        for power in powers:
                            for metric in metrics:
                                data = WeightedHistograms.from_codebook(
                                    counts,
                                    blocks.n_local(),
                                    index.ids,
                                    codebook,
                                    assign,
                                    Distance(weighting, metric, power),
                                )
                                nearest, _ = sparse_neighbours(data, k=k)
                                row = {
                                    **made_with,
                                    "descriptors": descriptor_norm,
                                    "reduced": reduced_norm,
                                    "size": size,
                                    "codebook": f"{size} (auto)" if "auto" in settings else str(size),
                                    "assign": assign,
                                    "weighting": weighting,
                                    "power": power,
                                    "metric": metric,
                                }
                                if labels is not None:
                                    scores = evaluation.evaluate(index.ids, index.ids[nearest], labels, k=k)
                                    row.update({key: value for key, value in scores.items() if key != "per_label"})
                                if verdicts is not None:
                                    judged = verdict_scores(index.ids, nearest, verdicts)
                                    row["verdict_pairs"] = judged["pairs"]
                                    for key in ("right_found", "judged_right"):
                                        if judged[key] is not None:
                                            row[f"verdict_{key}"] = judged[key]
                                if copies is not None:
                                    found = query_neighbours(data, copy_counts, k=k)[0]
                                    check = copies.score(found, decoded, errors, index.ids)
                                    row.update(selfcheck_top1=check["top1"], selfcheck_top5=check["top5"])
                                row["seconds"] = round(time.monotonic() - started, 2)
                                rows.append(row)
                                logger.info("compared %s", row)
    return rows


def sort_rows(rows):
    """Best first: by mAP, then precision@1 (with labels), else by the share of pairs judged right
    found, then of judged entries judged right (with verdicts), else by the self-check's top-1, then top-5."""
    keys = ("map", "precision_at_1", "verdict_right_found", "verdict_judged_right", "selfcheck_top1", "selfcheck_top5")
    return sorted(rows, key=lambda r: tuple(-r.get(key, 0.0) for key in keys))


def table(rows):
    """The rows as a Markdown table, in the given order, with the columns they have."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(heading for _, heading, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if fmt == "{}" else "---:" for _, _, fmt in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) if key in row else "" for key, _, fmt in columns) + " |")
    return "\n".join(lines)
