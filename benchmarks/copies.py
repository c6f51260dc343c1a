"""Lists a catalogue can use, on the proxy collections: what ``same_record`` does to the measures,
and how well the copy groups match the labelled groups.

``python -m benchmarks.copies [--collections NAME,...] [--work DIR] [--precision P]`` scores, at the
shipped settings, through the project's own stages (the quality benchmark's collections, cached
descriptors and Scorer):

- each ``same_record`` value: mAP, precision@1, recall@5 against the labels, and the share of the
  neighbours from the image's own record;
- the copy groups (``pipeline.copies.copy_groups`` on the shipped lists) at the threshold each
  candidate quantile of the self-check's distances gives: pairwise precision and recall (a pair
  of images in one group is right when they share a label), groups, groups spanning records;
- a precision-recall curve over thresholds, from 0 to the self-check's largest distance;
- what a later night's grouping costs: from scratch, with nothing changed, and with 1 % of the
  images changed (seconds, and the sets of linked images worked out again);
- the copy groups of verified pairs (as a run with re-ranked lists makes them) at the thresholds
  the self-check's hard negatives give at VERIFIED_RATES;
- the same verification on a finer grid (FINER_LAYER's 14 x 14, with a codebook of its own);
- the geometric verification (``pipeline.verify``) of each image's ``CANDIDATES`` nearest: how
  much of the candidate pairs of one picture it finds at a pair precision of 0.95, beside what
  the distance alone finds there, the scores of those pairs and of the others, of the
  self-check's copies against their originals and against them with their cells shuffled (the
  same words at other places), for each of ``VARIANTS``, and its cost per pair; and what a
  label-free threshold gives (the self-check's hard negatives at ``FALSE_POSITIVE_RATES``).

It prints a table per collection and a JSON line with every figure.
"""

import argparse
import json
import logging
import sys
import tempfile

import numpy as np

from pipeline import evaluation
from pipeline.copies import (
    QUANTILE,
    as_distance,
    by_distance,
    by_verification,
    copy_groups,
    known_sets,
    number_groups,
    selfcheck_threshold,
)
from pipeline.histograms import assign_words, word_histograms
from pipeline.neighbours import nearest_neighbours, query_neighbours
from pipeline.query import word_counts
from pipeline.records import SameRecord
from pipeline.selfcheck import verification_threshold
from pipeline.settings import PRECISIONS, Neighbours
from pipeline.verify import TOLERANCE, verify_pairs
from pipeline.weighting import IDF_SCALE

from . import proxies, quality
from .common import Timer

logger = logging.getLogger("benchmarks.copies")

SAME_RECORD = ("keep", "exclude", "at_most 1", "at_most 2")
QUANTILES = (0.25, 0.5, 0.75, 0.9, 1.0)
#: Points of the curve: thresholds evenly from 0 to the self-check's largest distance found first.
CURVE = 9


def pairwise(groups, labels):
    """Pairwise precision and recall of ``groups`` (lists of positions) against ``labels`` (one
    per image; an image whose label no other image has is in no true pair)."""
    labels = np.asarray(labels)
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    true_pairs = int((sizes * (sizes - 1) // 2).sum())
    found = right = 0
    for g in groups:
        found += len(g) * (len(g) - 1) // 2
        _, within = np.unique(inverse[g], return_counts=True)
        right += int((within * (within - 1) // 2).sum())
    return (right / found if found else 1.0), (right / true_pairs if true_pairs else 0.0), found


def group_row(groups, labels, records):
    precision, recall, pairs = pairwise(groups, labels)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "groups": len(groups),
        "pairs": pairs,
        "spanning": sum(len(set(records[g])) > 1 for g in groups),
    }


#: The candidates of each image verified (its nearest by distance), and the verifications
#: compared: (tolerance in cells, words a cell).
CANDIDATES = 50
VARIANTS = ((0.5, 1), (0.75, 1), (1.0, 1), (0.5, 2), (0.75, 2))
#: The pair precision at which the recall of the candidate pairs is read.
PAIR_PRECISION = 0.95
#: A label-free threshold: the scores of the self-check's hard negatives (each altered copy's
#: candidates but its original and the original's own HARD_SKIP nearest) at these rates.
FALSE_POSITIVE_RATES = (0.01, 0.001)
HARD_SKIP = 10


def recall_at_precision(order_by, right, precision=PAIR_PRECISION):
    """The share of the ``right`` pairs found, taking the pairs in decreasing ``order_by``, at the
    last point where the pairs taken are at least ``precision`` right (0 when none is)."""
    order = np.argsort(-np.asarray(order_by, dtype=np.float64), kind="stable")
    taken = np.cumsum(right[order])
    held = np.flatnonzero(taken / np.arange(1, len(order) + 1) >= precision)
    return round(float(taken[held[-1]] / right.sum()), 4) if len(held) and right.any() else 0.0


def verification(scorer, defaults, data, reducer, codebook, labels):
    """The verification's figures on one collection (see the module)."""
    c = scorer.c
    made = quality.made_with(defaults)
    n = len(c.ids)
    descriptors = c.blocks(made).read(np.arange(n))
    side = int(round(np.sqrt(descriptors.shape[1])))
    nearest, distances = nearest_neighbours(data, min(CANDIDATES, n - 1))
    pairs = np.stack([np.repeat(np.arange(n), nearest.shape[1]), nearest.ravel()], axis=1)
    labelled = ~np.char.startswith(labels, "none")
    right = labelled[pairs[:, 0]] & (labels[pairs[:, 0]] == labels[pairs[:, 1]])
    copy_descriptors, decoded, _ = scorer.copy_features(made)
    originals = np.array([scorer.copies.originals[q] for q in decoded], dtype=np.int64)
    copy_pairs = np.stack([n + np.arange(len(decoded)), originals], axis=1)
    shuffled_pairs = np.stack([n + len(decoded) + np.arange(len(decoded)), originals], axis=1)
    figures = {"candidates": int(nearest.shape[1]), "pairs": len(pairs), "right_pairs": int(right.sum())}
    figures["recall_by_distance"] = recall_at_precision(-distances.ravel(), right)
    figures["grids"] = grids(scorer, defaults, pairs, right)
    words_of = {  # each image's and copy's words, once for each number of words a cell
        assign: (
            assign_words(descriptors, reducer, codebook, assign),
            assign_words(copy_descriptors, reducer, codebook, assign),
        )
        for assign in sorted({assign for _, assign in VARIANTS} | {1})
    }
    shipped = None  # the scores at the shipped tolerance and one word a cell
    for tolerance, assign in VARIANTS:
        words, copy_words = words_of[assign]
        weights = codebook.word_weights("tfidf", assign) / IDF_SCALE  # each word's idf
        cells = copy_words.reshape(len(copy_words), side * side, assign)
        places = np.random.default_rng(0).permuted(np.tile(np.arange(side * side), (len(cells), 1)), axis=1)
        shuffled = np.take_along_axis(cells, places[:, :, None], axis=1).reshape(copy_words.shape)
        together = np.concatenate([words, copy_words, shuffled])
        with Timer() as t:
            scores, _ = verify_pairs(words, pairs, weights, side, tolerance, assign)
        copies_, _ = verify_pairs(together, copy_pairs, weights, side, tolerance, assign)
        null, _ = verify_pairs(together, shuffled_pairs, weights, side, tolerance, assign)
        if (tolerance, assign) == (TOLERANCE, 1):
            shipped = scores, copies_, weights
        figures[f"{tolerance}/{assign}"] = {
            "recall": recall_at_precision(scores, right),
            "right_p50": round(float(np.median(scores[right])), 1) if right.any() else 0.0,
            "other_p50_p99": np.percentile(scores[~right], [50, 99]).round(1).tolist(),
            "copies_p50": round(float(np.median(copies_)), 1) if len(copies_) else 0.0,
            "shuffled_max": round(float(null.max()), 1) if len(null) else 0.0,
            "us_per_pair": round(1e6 * t.seconds / len(pairs), 2),
        }
    # the label-free threshold, at the shipped tolerance and one word a cell
    words, copy_words = words_of[1]
    scores, copies_, weights = shipped
    together = np.concatenate([words, copy_words])
    counts = word_counts(copy_descriptors, reducer, codebook, defaults["assign"])
    found, _ = query_neighbours(data, counts, k=nearest.shape[1])
    near_original = [set(nearest[o, :HARD_SKIP].tolist()) | {int(o)} for o in originals]
    hard = [(n + q, int(x)) for q in range(len(decoded)) for x in found[q] if int(x) not in near_original[q]]
    null, _ = verify_pairs(together, np.array(hard, dtype=np.int64).reshape(-1, 2), weights, side)
    figures["label_free"] = {"hard_negatives": len(hard)}
    for rate in FALSE_POSITIVE_RATES:
        threshold = float(np.quantile(null, 1 - rate, method="higher")) if len(null) else 0.0
        taken = scores >= threshold
        figures["label_free"][str(rate)] = {
            "threshold": round(threshold, 2),
            "copies_verified": round(float(np.mean(copies_ >= threshold)), 4) if len(copies_) else 0.0,
            "precision": round(float(right[taken].mean()), 4) if taken.any() else 1.0,
            "recall": round(float(right[taken].sum() / right.sum()), 4) if right.any() else 0.0,
        }
    return figures


#: Share of the images whose histograms change on the measured later night.
CHANGED = 0.01


def nights(data, nearest, distances, threshold, ids):
    """What a later night of ``copy_groups`` costs at ``threshold``: seconds and sets worked out
    from scratch, with nothing changed, and with CHANGED of the images changed (their keys)."""
    keys = np.asarray(ids).astype(str)
    rows = {}

    def night(name, keys, known):
        with Timer() as t:
            g = copy_groups(
                nearest, distances, threshold, by_distance(data.subset), ids=ids, keys=keys, basis="b", known=known
            )
        rows[name] = {"seconds": round(t.seconds, 4), "sets": g.sets, "regrouped": g.regrouped}
        return g

    first = night("scratch", keys, None)
    known = known_sets(number_groups(first.groups, ids, ids, ids, "", sets=first.keys), first.settled)
    night("unchanged", keys, known)
    changed = keys.copy()
    picked = np.random.default_rng(0).choice(len(keys), max(1, int(CHANGED * len(keys))), replace=False)
    changed[picked] = np.char.add(changed[picked], "*")
    night(f"{CHANGED:.0%} changed", changed, known)
    return rows


#: The finer grid the verification is compared on, beside the shipped layer's (7 x 7 at conv5):
#: conv4's 14 x 14, its words from a codebook of its own, on the same candidate pairs.
FINER_LAYER = "conv4_block6_out"
GRID_TOLERANCES = (0.75, 1.5)


def grids(scorer, defaults, pairs, right):
    """The verification of the candidate ``pairs`` (``right``: of one picture) on the shipped
    layer's grid and on FINER_LAYER's: the recall at PAIR_PRECISION and the microseconds a pair,
    at each of GRID_TOLERANCES (in each grid's cells)."""
    rows = {}
    for config in (defaults, finer(defaults)):
        _, _, codebook = scorer.weighted(config)
        words = scorer.words[scorer.key(config)]
        side = int(round(np.sqrt(words.shape[1] / config["assign"])))
        weights = codebook.word_weights("tfidf", config["assign"]) / IDF_SCALE
        for tolerance in GRID_TOLERANCES:
            with Timer() as t:
                scores, _ = verify_pairs(words, pairs, weights, side, tolerance, config["assign"])
            rows[f"{config['layer']} {side}x{side} {tolerance}"] = {
                "recall": recall_at_precision(scores, right),
                "us_per_pair": round(1e6 * t.seconds / len(pairs), 1),
                "words": codebook.size,
            }
    return rows


def finer(defaults):
    """The shipped settings with FINER_LAYER's descriptors."""
    return {**defaults, "layer": FINER_LAYER}


#: The false-positive rates of the self-check's hard negatives whose thresholds the verified copies are scored at.
VERIFIED_RATES = (0.01, 0.001, 0.0001)


def verified_copies(scorer, defaults, data, codebook, labels):
    """The copy groups of verified pairs (``pipeline.copies.by_verification``, as a run with re-ranked
    lists makes them) at the threshold of each of VERIFIED_RATES: pairwise precision, recall and
    groups, the seconds of the verification of every short list, and of the grouping."""
    c = scorer.c
    width = min(Neighbours.candidates, len(c.ids) - 1)
    short, _ = nearest_neighbours(data, width)
    verifier = scorer.verifier(defaults, codebook)
    with Timer() as t:
        scores = verifier.scores(np.arange(len(short)), short)[0]
    _, decoded, _ = scorer.copy_features(quality.made_with(defaults))
    copy_words = scorer.copy_words[scorer.key(defaults)]
    found, _ = query_neighbours(data, word_histograms(copy_words, codebook.size), k=width)
    originals = np.array([scorer.copies.originals[q] for q in decoded], dtype=np.int64)
    together = scorer.verifier(defaults, codebook, copy_words)
    figures = {"candidates": width, "verify_seconds": round(t.seconds, 2)}
    for rate in VERIFIED_RATES:
        threshold, negatives = verification_threshold(data, together, found, originals, rate)
        with Timer() as t:
            groups = copy_groups(short, as_distance(scores), 1 / threshold, by_verification(verifier), mutual=False)
        figures[str(rate)] = {
            "threshold": round(threshold, 2),
            "hard_negatives": negatives,
            **group_row(groups.groups, labels, c.records),
            "group_seconds": round(t.seconds, 2),
        }
    return figures


def score_collection(scorer, defaults):
    """The figures of one collection at the shipped settings ``defaults``."""
    c = scorer.c
    data, reducer, codebook = scorer.weighted(defaults)
    labels = np.array([c.labels.get(str(i), f"none{i}") for i in c.ids])
    figures = {"same_record": {}, "copies": {}, "curve": []}
    lists = {}
    for text in SAME_RECORD:
        own = SameRecord.parse(text).own(5)
        nearest, distances = nearest_neighbours(data, 5, own=own)
        lists[text] = (nearest, distances)
        scores = evaluation.evaluate(c.ids, c.ids[nearest], c.labels, k=5)
        figures["same_record"][text] = {
            **{k: round(scores[k], 4) for k in ("map", "precision_at_1", "recall_at_5")},
            "own_record_share": round(float((c.records[nearest] == c.records[:, None]).mean()), 4),
        }
    nearest, distances = lists["keep"]
    check = scorer.copy_distances(defaults, data, reducer, codebook)
    figures["selfcheck_first"] = len(check["first_distances"])
    for q in QUANTILES:
        threshold = selfcheck_threshold(check["first_distances"], q)
        groups = copy_groups(nearest, distances, threshold, by_distance(data.subset)).groups
        figures["copies"][str(q)] = {"threshold": round(threshold, 6), **group_row(groups, labels, c.records)}
    figures["nights"] = nights(data, nearest, distances, selfcheck_threshold(check["first_distances"]), c.ids)
    figures["verification"] = verification(scorer, defaults, data, reducer, codebook, labels)
    figures["verified_copies"] = verified_copies(scorer, defaults, data, codebook, labels)
    for threshold in np.linspace(0.0, max(check["first_distances"], default=0.0), CURVE):
        groups = copy_groups(nearest, distances, threshold, by_distance(data.subset)).groups
        figures["curve"].append({"threshold": round(float(threshold), 6), **group_row(groups, labels, c.records)})
    return figures


def tables(name, info, figures):
    lines = [f"\n## {name}: {info}", "", "| same_record | mAP | P@1 | R@5 | own record |", "|---|---:|---:|---:|---:|"]
    for text, row in figures["same_record"].items():
        lines.append(
            f"| {text} | {row['map']:.3f} | {row['precision_at_1']:.3f} | {row['recall_at_5']:.3f} | "
            f"{100 * row['own_record_share']:.1f} % |"
        )
    lines += [
        "",
        "| copies at quantile | threshold | precision | recall | groups | spanning records |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for q, row in figures["copies"].items():
        shipped = " (shipped)" if float(q) == QUANTILE else ""
        lines.append(
            f"| {q}{shipped} | {row['threshold']:.4g} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['groups']} | {row['spanning']} |"
        )
    lines += [
        "",
        "a later night's copies (seconds; sets worked out / sets): "
        + ", ".join(
            f"{name} {r['seconds']:.3f} s, {r['regrouped']} / {r['sets']}" for name, r in figures["nights"].items()
        ),
    ]
    v = figures["verification"]
    lines += [
        "",
        f"verification of each image's {v['candidates']} nearest ({v['right_pairs']} of {v['pairs']} candidate pairs "
        f"of one picture); their recall at pair precision {PAIR_PRECISION}: by distance {v['recall_by_distance']:.3f}",
        "",
        "| tolerance / words a cell | recall | score: pairs of one picture p50 | other pairs p50 / p99 "
        "| self-check copies p50 | shuffled max | us per pair |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tolerance, assign in VARIANTS:
        r = v[f"{tolerance}/{assign}"]
        lines.append(
            f"| {tolerance} / {assign} | {r['recall']:.3f} | {r['right_p50']:g} | {r['other_p50_p99'][0]:g} / "
            f"{r['other_p50_p99'][1]:g} | {r['copies_p50']:g} | {r['shuffled_max']:g} | {r['us_per_pair']:.1f} |"
        )
    lines += [
        "",
        "the same pairs verified on each grid (recall at pair precision "
        f"{PAIR_PRECISION}, us a pair): "
        + ", ".join(f"{name}: {r['recall']:.3f}, {r['us_per_pair']:g}" for name, r in v["grids"].items()),
    ]
    free = v["label_free"]
    lines += [
        "",
        f"label-free thresholds from the self-check's {free['hard_negatives']} hard negatives (shipped tolerance, one "
        "word a cell): "
        + ", ".join(
            f"rate {rate}: {free[str(rate)]['threshold']:g}, copies verified {free[str(rate)]['copies_verified']:.2f}, "
            f"candidate pairs precision / recall {free[str(rate)]['precision']:.3f} / {free[str(rate)]['recall']:.3f}"
            for rate in FALSE_POSITIVE_RATES
        ),
    ]
    vc = figures["verified_copies"]
    lines += [
        "",
        f"copies of verified pairs (each image's {vc['candidates']} nearest verified in {vc['verify_seconds']} s):",
        "",
        "| false-positive rate | score threshold | precision | recall | groups | spanning records |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rate in VERIFIED_RATES:
        r = vc[str(rate)]
        lines.append(
            f"| {rate} | {r['threshold']:g} | {r['precision']:.3f} | {r['recall']:.3f} | {r['groups']} | "
            f"{r['spanning']} |"
        )
    lines += [
        "",
        "curve (threshold: precision / recall): "
        + ", ".join(f"{r['threshold']:.4g}: {r['precision']:.3f} / {r['recall']:.3f}" for r in figures["curve"]),
    ]
    return "\n".join(lines)


def main(argv=None):
    every = proxies.COLLECTIONS + proxies.EXTRA + proxies.BOOKS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", default=",".join(s.name for s in every), help="collections to score")
    parser.add_argument("--work", default="artifacts/bench-quality", help="as benchmarks.quality")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="as benchmarks.quality")
    parser.add_argument("--selfcheck", type=int, default=50, help="images altered for the self-check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tasks.config import precision, resnet

    args.weights, args.seed, args.batch_size = resnet().weights, resnet().seed, resnet().batch_size
    args.precision = precision().precision if args.precision in (None, "auto") else args.precision
    args.kmeans_seed = 0
    names = [n.strip() for n in args.collections.split(",") if n.strip()]
    specs = [s for s in every if s.name in names]
    problems = [f"no collection {n!r}" for n in sorted(set(names) - {s.name for s in specs})]
    problems += proxies.missing_sources(specs)
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    defaults = quality.shipped()
    results = {}
    with Timer() as whole:
        for spec in specs:
            with tempfile.TemporaryDirectory(prefix="copies-") as scratch:
                scorer, seconds = quality.prepared(spec, [defaults, finer(defaults)], args, scratch)
                figures = score_collection(scorer, defaults)
            info = f"{scorer.c.summary['images']} images, {scorer.c.summary['groups']} groups, records {len(set(scorer.c.records))}"
            results[spec.name] = {**figures, **seconds}
            print(tables(spec.name, info, figures), flush=True)
    print(
        json.dumps(
            {
                "bench": "copies",
                "weights": args.weights,
                "precision": args.precision,
                "quantile": QUANTILE,
                "seconds": round(whole.seconds, 1),
                "collections": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
