"""Neighbour queries: the exact sparse method against the BallTree on the same synthetic
histograms, in one run.

Word frequencies fall off as rank**-0.6 (``--exponent``); 49 descriptors per image. The profile
measured on codebooks fitted to real photographs, with random weights, is flatter: 0.36 at 250
words and 0.41 at 1,000 (``python -m benchmarks.words``). A flatter profile makes the sparse
method slower at 1,000 words and faster at 8,500 (``--exponent 0.6 0.41`` times both side by
side); 0.6 is kept so that the figures stay comparable until ImageNet descriptors measure it. The BallTree over
dense histograms of thousands of words needs about 0.4 s per query at 20,000 images, so
``--tree-queries N`` times its build and N query rows, extrapolates to every row, and checks
that those rows are identical to the sparse method's.

    python -m benchmarks.neighbours [--images 20000] [--words 8500] [--tree-queries 200] [--queries N]
        [--distances tfidf/cosine raw/euclidean] [--stop 0 0.01 0.02] [--dense-share 0.03 0.12]

Each distance (word weighting / metric) is timed on the same histograms, one after the other.

``--queries N`` times N random query rows of the sparse method and extrapolates to every row
(each query costs the length of its posting lists), for collections of a million images.
``--dense-share`` times the given shares of the images above which a word's counts are
accumulated from a dense row instead of its posting list (``pipeline.inverted.DENSE_SHARE``,
the shipped one by default), side by side on the same histograms.
``--stop`` leaves out the given shares of the words found in the most images (a stop list), to
time what it saves; its cost in quality is measured by ``benchmarks.quality`` (``stop``).
"""

import argparse
import functools

import numpy as np
import scipy.sparse as sp

from pipeline.histograms import word_histograms
from pipeline.inverted import DENSE_SHARE
from pipeline.neighbours import balltree_neighbours, sparse_neighbours
from pipeline.weighting import DEFAULT_METRIC, DEFAULT_POWER, DEFAULT_WEIGHTING, WeightedHistograms

from .common import Timer, add_record_option, peak_rss_mb, recording, report

#: Exponent of the rank-frequency profile of the synthetic visual words (see the module).
EXPONENT = 0.6


def synthetic_counts(images, words, n_local=49, exponent=EXPONENT, seed=0, block=20_000, stop=0.0):
    """Counts of ``images`` random histograms whose word frequencies fall off as rank**-exponent,
    without the ``stop`` share of the words found in the most images (a stop list): csr_matrix."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, words + 1) ** exponent
    p /= p.sum()
    parts = [
        word_histograms(rng.choice(words, size=(min(block, images - s), n_local), p=p), words)
        for s in range(0, images, block)
    ]
    counts = sp.vstack(parts, format="csr")
    if stop:
        in_images = np.bincount(counts.indices, minlength=words)
        keep = np.ones(words)
        keep[np.argsort(-in_images, kind="stable")[: int(round(stop * words))]] = 0
        counts = sp.csr_matrix(counts @ sp.diags(keep))
        counts.eliminate_zeros()
    return counts


#: The shipped distance (at the shipped power), and the one it replaced (raw counts).
DISTANCES = (f"{DEFAULT_WEIGHTING}/{DEFAULT_METRIC}", "raw/euclidean")


def power_of(distance):
    """The power a distance of DISTANCES is timed at: the shipped one's, or 1 for the others."""
    return DEFAULT_POWER if distance == DISTANCES[0] else 1.0


def run(
    images=20000,
    words=(8500,),
    tree_queries=200,
    exponents=(EXPONENT,),
    queries=None,
    distances=DISTANCES,
    stops=(0.0,),
    dense_shares=(DENSE_SHARE,),
):
    rows, results = [], []
    runs = [(w, e, d, s) for w in words for e in exponents for d in distances for s in stops]
    for size, exponent, distance, stop in runs:
        weighting, metric = distance.split("/")
        counts = WeightedHistograms(
            synthetic_counts(images, size, exponent=exponent, stop=stop),
            49,
            np.arange(images),
            weighting,
            metric,
            power=power_of(distance),
        )
        timed = (
            np.arange(images)
            if not queries
            else np.random.default_rng(2).choice(images, min(queries, images), replace=False)
        )
        for share, seconds in time_shares(counts, timed, dense_shares).items():
            what, line, figures = timed_row(
                images, size, exponent, exponents, distance, stop, share, dense_shares, seconds, len(timed)
            )
            if tree_queries:
                line += "; " + compare_balltree(counts, share, images, tree_queries, seconds, figures)
            rows.append((what, line))
            results.append(figures)
    figures = results[0] if len(results) == 1 else {"bench": "neighbours", "runs": results}
    report(rows, figures)
    return figures


def time_shares(counts, timed, dense_shares, rounds=3):
    """Seconds of the sparse method's full search at each dense share, the time of ``timed``
    query rows extrapolated to every row: the best of ``rounds`` rounds, the shares taking
    turns within each, so that a busy spell of the machine does not favour one."""
    images, first_rows = len(counts), np.arange(min(len(counts), 16))
    searches = {share: functools.partial(sparse_neighbours, counts, k=5, dense_share=share) for share in dense_shares}
    seconds = {share: np.inf for share in dense_shares}
    for search in searches.values():
        search(rows=first_rows)  # compiles the kernel and builds the inverted file
    for _ in range(rounds if len(dense_shares) > 1 else 1):
        for share, search in searches.items():
            with Timer() as few_t:
                search(rows=first_rows)
            with Timer() as sparse_t:
                search(rows=timed)
            # every further query costs alike (its posting lists)
            extra = max(sparse_t.seconds - few_t.seconds, 0) / max(len(timed) - len(first_rows), 1)
            seconds[share] = min(seconds[share], sparse_t.seconds + extra * (images - len(timed)))
    return seconds


def timed_row(images, size, exponent, exponents, distance, stop, share, dense_shares, seconds, timed):
    """The row of one timed search (what, line) and its figures."""
    figures = {
        "bench": "neighbours",
        "n_images": images,
        "words": size,
        "distance": distance,
        "power": power_of(distance),
        "stop": stop,
        "exponent": exponent,
        "dense_share": share,
        "seconds": round(seconds, 2),
        "query_rows_timed": timed,
        "peak_rss_mb": round(peak_rss_mb()),
    }
    extrapolated = "" if timed == images else f" ({timed} query rows timed, the rest extrapolated)"
    stopped = f", the {stop:.1%} most widespread words stopped" if stop else ""
    profile = f", rank**-{exponent:g}" if len(exponents) > 1 else ""
    dense = f", dense rows above {share:g}" if len(dense_shares) > 1 else ""
    what = f"{images} images, {size} words{profile}, {distance}{stopped}{dense}"
    return what, f"sparse {seconds:.2f} s{extrapolated}, peak RSS {figures['peak_rss_mb']} MB", figures


def compare_balltree(counts, share, images, tree_queries, seconds, figures):
    """Time the BallTree on ``tree_queries`` rows, extrapolated, and check them against the sparse
    method at dense share ``share``: its line, its figures added to ``figures``."""
    sample = np.random.default_rng(1).choice(images, size=min(tree_queries, images), replace=False)
    few = sample[: max(1, len(sample) // 20)]
    with Timer() as few_t:
        balltree_neighbours(counts, k=5, rows=few)
    with Timer() as tree_t:
        tree = balltree_neighbours(counts, k=5, rows=sample)
    # both calls build the tree: their difference is the cost of the extra query rows
    per_row = max(tree_t.seconds - few_t.seconds, 0) / max(len(sample) - len(few), 1)
    tree_seconds = tree_t.seconds + per_row * (images - len(sample))
    mine = sparse_neighbours(counts, k=5, rows=sample, dense_share=share)
    same = bool(np.array_equal(tree[0], mine[0]) and np.array_equal(tree[1], mine[1]))
    figures.update(
        balltree_seconds=round(tree_seconds, 1),
        balltree_rows_timed=len(sample),
        speedup=round(tree_seconds / seconds, 1),
        identical=same,
    )
    timed = "" if len(sample) == images else f" (build + {len(sample)} query rows timed, the rest extrapolated)"
    return f"BallTree {tree_seconds:.1f} s{timed}, identical: {same}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--words", type=int, nargs="+", default=[8500])
    parser.add_argument("--tree-queries", type=int, default=200, help="BallTree query rows to time; 0: no BallTree")
    parser.add_argument(
        "--exponent", type=float, nargs="+", default=[EXPONENT], help="word frequencies fall off as rank**-exponent"
    )
    parser.add_argument("--queries", type=int, help="time this many query rows of the sparse method and extrapolate")
    parser.add_argument("--distances", nargs="+", default=list(DISTANCES), help="weighting/metric pairs to time")
    parser.add_argument(
        "--stop", type=float, nargs="+", default=[0.0], help="shares of the most widespread words left out (stop lists)"
    )
    parser.add_argument(
        "--dense-share",
        type=float,
        nargs="+",
        default=[DENSE_SHARE],
        help="shares of the images above which a word is accumulated from a dense row",
    )
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("neighbours", args, argv):
        run(
            args.images,
            tuple(args.words),
            args.tree_queries,
            tuple(args.exponent),
            args.queries,
            tuple(args.distances),
            args.stop,
            tuple(args.dense_share),
        )


if __name__ == "__main__":
    main()
