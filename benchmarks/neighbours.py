"""Neighbour queries: the BallTree against the exact sparse method on the same synthetic
histograms (word frequencies falling off as 1/rank, as on a real codebook), in one run.

    python -m benchmarks.neighbours [--images 2000] [--words 1000 256 64] [--no-balltree]
"""

import argparse

import numpy as np

from pipeline.histograms import word_histograms
from pipeline.neighbours import Counts, balltree_neighbours, sparse_neighbours

from .common import Timer, peak_rss_mb, report


def zipf_counts(images, words, n_local=49, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, words + 1)
    return Counts(word_histograms(rng.choice(words, size=(images, n_local), p=p / p.sum()), words), n_local, np.arange(images))


def run(images=2000, words=(1000, 256, 64), balltree=True):
    rows, results = [], []
    for size in words:
        counts = zipf_counts(images, size)
        with Timer() as sparse_t:
            fast = sparse_neighbours(counts, k=5)
        figures = {"bench": "neighbours", "n_images": images, "words": size, "seconds": round(sparse_t.seconds, 2)}
        line = f"sparse {sparse_t.seconds:.2f} s"
        if balltree:
            with Timer() as tree_t:
                tree = balltree_neighbours(counts, k=5)
            same = bool(np.array_equal(tree[0], fast[0]) and np.array_equal(tree[1], fast[1]))
            figures.update(balltree_seconds=round(tree_t.seconds, 2), speedup=round(tree_t.seconds / sparse_t.seconds, 1), identical=same)
            line += f", BallTree {tree_t.seconds:.2f} s, identical: {same}"
        figures["peak_rss_mb"] = round(peak_rss_mb())
        rows.append((f"{images} images, {size} words", line))
        results.append(figures)
    figures = results[0] if len(results) == 1 else {"bench": "neighbours", "runs": results}
    report(rows, figures)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--words", type=int, nargs="+", default=[1000, 256, 64])
    parser.add_argument("--no-balltree", action="store_true", help="time the sparse method alone")
    args = parser.parse_args()
    run(args.images, tuple(args.words), balltree=not args.no_balltree)


if __name__ == "__main__":
    main()
