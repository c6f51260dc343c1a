"""Retrieval quality over a grid of settings: descriptors, descriptor normalisation, codebook size,
assignment, word weighting, power and distance, each step reusing what the settings before it
allow (:class:`Scorer`, which the compare command and the quality benchmark share), and the
table of the scores."""

import itertools
import logging
import time

import numpy as np

from . import evaluation
from .codebook import DEFAULT_SAMPLE_SIZE, check_size, fit_codebook
from .histograms import DEFAULT_ASSIGN, compute_histograms, word_histograms
from .neighbours import sparse_neighbours
from .query import query_words
from .reduction import DEFAULT_DESCRIPTORS, DEFAULT_REDUCED, DEFAULT_SAMPLE_IMAGES, DEFAULT_VARIANCE, fit_reducer
from .search import NeighbourSettings, NightSearch
from .selfcheck import check_copies
from .settings import Neighbours
from .verdicts import verdict_scores
from .verify import Verifier
from .weighting import DEFAULT_POWER, Distance, WeightedHistograms

logger = logging.getLogger(__name__)

#: Columns of the comparison tables (the compare command's, the quality benchmark's): (key,
#: heading, format); a table shows those its rows have.
COLUMNS = (
    ("name", "name", "{}"),
    ("layer", "layer", "{}"),
    ("colour", "colour", "{}"),
    ("trim", "trim", "{}"),
    ("descriptors", "descriptors", "{}"),
    ("variance", "variance", "{}"),
    ("reduced", "reduced", "{}"),
    ("codebook", "K", "{}"),
    ("assign", "assign", "{}"),
    ("weighting", "weighting", "{}"),
    ("power", "power", "{}"),
    ("metric", "metric", "{}"),
    ("rerank", "rerank", "{}"),
    ("stop", "stop", "{}"),
    ("map", "mAP", "{:.3f}"),
    ("precision_at_1", "P@1", "{:.3f}"),
    ("precision_at_5", "P@5", "{:.3f}"),
    ("recall_at_5", "R@5", "{:.3f}"),
    ("verdict_right_found", "verdicts: right found", "{:.3f}"),
    ("verdict_judged_right", "verdicts: judged right", "{:.3f}"),
    ("selfcheck_top1", "self-check top-1", "{:.3f}"),
    ("selfcheck_top5", "self-check top-5", "{:.3f}"),
)


#: What a configuration's descriptors are made with: the keys of it that name them.
MADE_WITH = ("layer", "colour", "trim")


class Scorer:
    """Scores configurations of the settings after extraction on one collection, fitting each
    reducer and codebook, and making each set of histograms, once, as a run with those
    settings would make them: the grids of the compare command and of the quality benchmark.

    A configuration is a dict: what its descriptors are made with (those of MADE_WITH it
    names), and ``descriptors``, ``reduced``, ``size``, ``assign``, ``weighting``, ``power``
    and ``metric`` (``[reduction]``, ``[codebook]``, ``[histograms]`` and ``[neighbours]``);
    ``variance`` too, else the scorer's.

    Parameters
    ----------
    blocks : callable
        What a configuration's descriptors are made with (a tuple, in the order of MADE_WITH)
        -> the descriptors of the collection's images (Blocks).
    ids, keys : ndarray
        The images' database IDs and histogram keys, in the blocks' order.
    records : ndarray, optional
        Each image's catalogue record, carried by the weighted histograms.
    labels : dict of str to str, optional
        Database ID -> label, for precision, recall and mAP (:func:`pipeline.evaluation.evaluate`).
    verdicts : pipeline.verdicts.Verdicts, optional
        The site's verdicts, for the share of pairs judged right that the lists find and the
        share of their judged entries judged right (:func:`pipeline.verdicts.verdict_scores`).
    copies : pipeline.selfcheck.Copies, optional
        Altered copies of a sample of the collection, for the self-check.
    copy_features : callable, optional
        What the descriptors are made with -> the copies' (descriptors, decoded, errors), made
        as the blocks' were (:meth:`Copies.extract`).
    variance, sample_images_, reduction_seed
        The reducer's settings (``[reduction]``).
    sample_size, seed
        The codebook's (``[codebook]``).
    k : int
        Neighbours scored per image.
    candidates : int
        The short list's length of the configurations with ``rerank = on`` (``[neighbours] candidates``).
    """

    def __init__(
        self,
        blocks,
        ids,
        keys,
        records=None,
        labels=None,
        verdicts=None,
        copies=None,
        copy_features=None,
        variance=DEFAULT_VARIANCE,
        sample_images_=DEFAULT_SAMPLE_IMAGES,
        reduction_seed=0,
        sample_size=DEFAULT_SAMPLE_SIZE,
        seed=0,
        k=5,
        candidates=Neighbours.candidates,
    ):
        self.candidates = candidates
        self.blocks, self.ids, self.keys, self.records = blocks, ids, keys, records
        self.labels, self.verdicts, self.copies, self.copy_features = labels, verdicts, copies, copy_features
        self.variance, self.sample_images, self.reduction_seed = variance, sample_images_, reduction_seed
        self.sample_size, self.seed, self.k = sample_size, seed, k
        self.reducers, self.codebooks, self.counts, self.words, self.copy_words = {}, {}, {}, {}, {}

    @staticmethod
    def made(config):
        """What ``config``'s descriptors are made with: a tuple in the order of MADE_WITH."""
        return tuple(config.get(key) for key in MADE_WITH)

    def key(self, config):
        """What ``config``'s histograms are made from: (made with, descriptors, variance, reduced,
        words, assign); its first three make the reducer, its first five the codebook."""
        blocks = self.blocks(self.made(config))
        words = check_size(config["size"], blocks.n_images, blocks.n_local(), self.sample_size)
        variance = config.get("variance", self.variance)
        return (self.made(config), config["descriptors"], variance, config["reduced"], words, config["assign"])

    def fitted(self, key):
        """The reducer and codebook of a configuration's :meth:`key`, each fitted once."""
        made, descriptors, variance, reduced, words, _ = key
        if key[:3] not in self.reducers:
            self.reducers[key[:3]] = fit_reducer(
                self.blocks(made), variance, descriptors, DEFAULT_REDUCED, self.sample_images, self.reduction_seed
            )
        reducer = self.reducers[key[:3]].with_reduced(reduced)
        if key[:5] not in self.codebooks:
            self.codebooks[key[:5]] = fit_codebook(self.blocks(made), reducer, words, self.sample_size, self.seed)
        return reducer, self.codebooks[key[:5]]

    def word_weights(self, config, codebook, counts):
        """What gives the configuration's word weights: the codebook (a scorer of other weights overrides it)."""
        return codebook

    def weighted(self, config):
        """The collection's WeightedHistograms at ``config``, its reducer and codebook."""
        key = self.key(config)
        reducer, codebook = self.fitted(key)
        blocks = self.blocks(key[0])
        if key not in self.counts:
            counts, _, self.words[key] = compute_histograms(blocks, self.keys, reducer, codebook, config["assign"])
            self.counts[key] = counts
        data = WeightedHistograms.from_codebook(
            self.counts[key],
            blocks.n_local(),
            self.ids,
            self.word_weights(config, codebook, self.counts[key]),
            config["assign"],
            Distance(config["weighting"], config["metric"], config["power"]),
            records=self.records,
        )
        return data, reducer, codebook

    def copy_distances(self, config, data, reducer, codebook):
        """The self-check's result at ``config`` (:func:`pipeline.selfcheck.check_copies`, with
        ``first_distances`` and the verification's threshold)."""
        descriptors, decoded, errors = self.copy_features(self.made(config))
        key = self.key(config)
        if key not in self.copy_words:  # once per codebook and assignment
            self.copy_words[key] = query_words(descriptors, reducer, codebook, config["assign"]) if decoded else None
        counts = verifier = None
        if decoded:
            counts = word_histograms(self.copy_words[key], codebook.size)
            verifier = self.verifier(config, codebook, self.copy_words[key])
        rerank = config.get("rerank", "off") == "on"
        return check_copies(
            self.copies, decoded, errors, self.ids, data, counts, verifier, self.k, self.candidates, rerank
        )

    def verifier(self, config, codebook, more=None):
        """The Verifier of the collection's images at ``config`` (and, after them, of the images of words ``more``)."""
        words = self.words[self.key(config)]
        return Verifier.of_codebook(
            words if more is None else np.concatenate([words, more]), codebook, config["assign"]
        )

    def neighbours(self, config, data, codebook, check=None):
        """The lists of ``config``: the k nearest, or with ``rerank = on`` the short lists re-ranked
        with the threshold of the self-check ``check`` (as a run finds them)."""
        if config.get("rerank", "off") != "on":
            return sparse_neighbours(data, k=self.k)[0]
        if check is None or check["verification"]["threshold"] is None:
            raise ValueError("rerank = on needs the self-check's threshold: give the scorer altered copies")
        settings = NeighbourSettings(self.k, data.distance, rerank=True, candidates=self.candidates)
        search = NightSearch(data, settings, why_full="compared", verifier=self.verifier(config, codebook))
        return search.lists().ranked(self.k, check["verification"]["threshold"], search.judgements)[0]

    def score(self, config):
        """The row of ``config``: its settings; ``size``, the number of words, and ``codebook``,
        the same ("(auto)" added when ``size = auto`` gives it); with labels, ``queries``,
        ``precision_at_1``, ``precision_at_5``, ``recall_at_5`` and ``map``; with verdicts,
        ``verdict_pairs``, ``verdict_right_found`` and ``verdict_judged_right`` (where there is
        something to count); with copies, ``selfcheck_top1`` and ``selfcheck_top5``; and
        ``seconds``, what it took (the fits it made among them)."""
        started = time.monotonic()
        data, reducer, codebook = self.weighted(config)
        check = self.copy_distances(config, data, reducer, codebook) if self.copies is not None else None
        nearest = self.neighbours(config, data, codebook, check)
        auto = str(config["size"]).strip().lower() == "auto"
        row = {**config, "size": codebook.size, "codebook": f"{codebook.size} (auto)" if auto else str(codebook.size)}
        if self.labels is not None:
            scores = evaluation.evaluate(self.ids, self.ids[nearest], self.labels, k=self.k)
            row.update({key: value for key, value in scores.items() if key != "per_label"})
        if self.verdicts is not None:
            judged = verdict_scores(self.ids, nearest, self.verdicts)
            row["verdict_pairs"] = judged["pairs"]
            for key in ("right_found", "judged_right"):
                if judged[key] is not None:
                    row[f"verdict_{key}"] = judged[key]
        if check is not None:
            row.update(selfcheck_top1=check["top1"], selfcheck_top5=check["top5"])
        row["seconds"] = round(time.monotonic() - started, 2)
        logger.info("compared %s", row)
        return row


def compare_layer(
    blocks,
    index,
    made_with,
    sizes,
    weightings,
    metrics,
    descriptors=(DEFAULT_DESCRIPTORS,),
    reduced=(DEFAULT_REDUCED,),
    assigns=(DEFAULT_ASSIGN,),
    powers=(DEFAULT_POWER,),
    reranks=("off",),
    copy_features=None,
    **scoring,
):
    """Score every combination of the settings on one set of descriptors (one layer, one image
    preparation), by a :class:`Scorer`: each reducer, codebook and set of histograms made once.

    Parameters
    ----------
    blocks : Blocks
        The descriptors of the collection's images.
    index : FeatureIndex
        The images (database IDs) in the order of ``blocks``.
    made_with : dict
        What the descriptors were made with (``layer``, ``colour``, ``trim``), the first columns of each row.
    sizes : sequence of int or "auto"
        Codebook sizes; one that gives the same number of words as another is scored once.
    weightings, metrics : sequence of str
    descriptors, reduced, assigns, powers, reranks : sequences
        Values of ``[reduction] descriptors``, ``[reduction] reduced``, ``[histograms] assign``,
        ``[neighbours] power`` and ``[neighbours] rerank`` (``on`` needs ``copies``).
    copy_features : (descriptors, decoded, errors), optional
        The copies' descriptors, made as ``blocks``' were, from :meth:`Copies.extract`.
    **scoring
        The :class:`Scorer`'s ``labels``, ``verdicts``, ``copies`` and settings.

    Returns
    -------
    rows : list of dict
        :meth:`Scorer.score`'s, in the order of the grid.
    """
    scorer = Scorer(lambda made: blocks, index.ids, index.keys, copy_features=lambda made: copy_features, **scoring)
    words = {}  # number of words -> the size scored for it (auto, where auto gives it)
    for size in sizes:
        n = check_size(size, blocks.n_images, blocks.n_local(), scorer.sample_size)
        words[n] = "auto" if "auto" in (words.get(n), str(size)) else size
    grid = itertools.product(descriptors, reduced, words.values(), assigns, weightings, powers, metrics, reranks)
    keys = ("descriptors", "reduced", "size", "assign", "weighting", "power", "metric", "rerank")
    return [scorer.score({**made_with, **dict(zip(keys, values))}) for values in grid]


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
