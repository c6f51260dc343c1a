"""Retrieval quality of the neighbour lists against labels: precision, recall, mean average precision."""

import collections
import csv
import logging

import numpy as np
import pandas as pd

from .errors import ConfigError, named
from .output import raw_lists
from .verdicts import verdict_scores

logger = logging.getLogger(__name__)


def read_labels(path):
    """Read a labels CSV with the header ``id,label``: dict of str (database ID) to str.

    Raises
    ------
    ConfigError
        When the file cannot be read, lacks a column, repeats an ID or has an empty value.
    """
    where = f"{named('labels')}={str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except OSError as exc:
        raise ConfigError(
            f"{where} cannot be read ({exc.strerror}); give a CSV file with the columns id,label"
        ) from None
    if not rows or not {"id", "label"} <= {c.strip() for c in columns if c}:
        raise ConfigError(f"{where} has no rows or lacks the columns id,label")
    labels = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if not row["id"] or not row["label"]:
            raise ConfigError(f"{where} has an empty id or label on line {line}")
        if row["id"] in labels:
            raise ConfigError(f"{where} repeats the ID {row['id']} on line {line}")
        labels[row["id"]] = row["label"]
    return labels


def _scores(relevant_flags, n_relevant, k):
    """precision@1, precision@k, recall@k and average precision of one ranked list."""
    hits = np.asarray(relevant_flags[:k], dtype=bool)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return (
        float(hits[0]) if len(hits) else 0.0,
        float(hits.sum()) / k,
        float(hits.sum()) / n_relevant,
        float((precision_at * hits).sum()) / min(n_relevant, k),
    )


def evaluate(ids, neighbours, labels, k=5):
    """Score every image's neighbour list against the labels.

    Images with the same label are relevant to each other. A query is a labelled image of
    the collection whose label at least one other image of the collection has; an image
    whose label occurs once has no relevant neighbour and serves as a distractor only.
    Unlabelled images are distractors too.

    Parameters
    ----------
    ids : ndarray of shape (n,)
        Database IDs of the collection's images.
    neighbours : ndarray of shape (n, k_run)
        Database IDs of each image's neighbours, nearest first.
    labels : dict of str to str
        Database ID -> label (IDs not in the collection are ignored).
    k : int
        Depth of precision@k, recall@k and average precision; at most k_run.

    Returns
    -------
    dict with ``queries``, ``precision_at_1``, ``precision_at_5``, ``recall_at_5``, ``map``
    (each the mean over the queries; "5" stands for ``k``) and ``per_label``: the same per
    label, with its number of queries.

    Notes
    -----
    precision@k = relevant among the first k / k; recall@k = relevant among the first k /
    relevant in the collection; average precision = sum over the first k of precision@i at
    each relevant rank i, divided by min(relevant in the collection, k) (so a list that
    puts every reachable relevant image first scores 1).
    """
    if k > neighbours.shape[1]:
        raise ConfigError(f"evaluation depth k={k} is more than the {neighbours.shape[1]} neighbours per image")
    label_of = {str(i): labels[str(i)] for i in ids if str(i) in labels}
    sizes = collections.Counter(label_of.values())
    per_label = collections.defaultdict(list)
    for row, image in enumerate(ids):
        label = label_of.get(str(image))
        if label is None or sizes[label] < 2:
            continue
        flags = [label_of.get(str(other)) == label for other in neighbours[row]]
        per_label[label].append(_scores(flags, sizes[label] - 1, k))

    def summary(scores):
        means = np.mean(scores, axis=0) if scores else np.zeros(4)
        return {
            "queries": len(scores),
            "precision_at_1": round(float(means[0]), 6),
            "precision_at_5": round(float(means[1]), 6),
            "recall_at_5": round(float(means[2]), 6),
            "map": round(float(means[3]), 6),
        }

    result = summary([s for scores in per_label.values() for s in scores])
    result["per_label"] = {label: summary(scores) for label, scores in sorted(per_label.items())}
    return result


def score_night(result, labels=None, verdicts=None, labels_path=""):
    """A night's raw lists (before the verdicts, so that they never score themselves) against
    ``labels`` (:func:`read_labels`, read from ``labels_path``) and against ``verdicts``: the
    scores evaluation.json keeps, logged.

    Raises
    ------
    ConfigError
        When the labels give no query (no label is shared by two images of the run).
    """
    ids, raw = result["ids"], raw_lists(result)
    scores = {}
    if labels is not None:
        scores = evaluate(ids, raw, labels)
        if scores["queries"] == 0:
            raise ConfigError(
                f"{named('labels')}={labels_path!r} gives no query: no label is shared by two images of this "
                "run; label groups of similar images"
            )
        logger.info(
            "evaluation over %d queries: precision@1 %.3f, precision@5 %.3f, recall@5 %.3f, mAP %.3f",
            scores["queries"],
            scores["precision_at_1"],
            scores["precision_at_5"],
            scores["recall_at_5"],
            scores["map"],
        )
    if verdicts is not None:
        positions = pd.Index(ids).get_indexer(raw.ravel()).reshape(raw.shape)
        judged = scores["verdicts"] = verdict_scores(ids, positions, verdicts)
        logger.info(
            "the raw lists against %d verdicts: %s of the pairs judged right found, %s of their %d judged "
            "entries judged right",
            judged["pairs"],
            _share(judged["right_found"]),
            _share(judged["judged_right"]),
            judged["judged_in_lists"],
        )
    return scores


def _share(value):
    return "none" if value is None else f"{100 * value:.1f} %"
