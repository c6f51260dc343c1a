"""A simulated collection through reduction, codebook, histograms and neighbours: synthetic
descriptors stand in for the extraction, and the pipeline's own code runs after it. Prints
the seconds and the peak resident memory of each stage, the codebook's assignment rate and
what the feature store would keep per image.

    python -m benchmarks.scale [--images 20000] [--words 1000] [--rank 64] [--workers N [--shards S]]

The descriptors of image i are made from i alone (the same image always reads the same):
49 draws around latent "themes" projected to 2,048 channels with rank ``--rank``, so that
the PCA keeps about ``rank`` components.

With ``--workers N``, the pipeline's own tasks run the night instead: the inventory, the
feature shards over a store of the same synthetic descriptors, the reducer and the codebook,
then the sharded histograms and neighbours on a local Luigi central scheduler, by 1 worker
process of one core and then by N, side by side (``benchmarks.shards``).
"""

import argparse
import tempfile

import numpy as np

from pipeline.blocks import sample_images
from pipeline.codebook import fit_codebook
from pipeline.histograms import compute_histograms
from pipeline.neighbours import sparse_neighbours
from pipeline.reduction import Reducer
from pipeline.weighting import WeightedHistograms

from .common import StagePeak, Timer, add_record_option, recording, report
from .shards import run_sharded
from .synthetic import SyntheticBlocks


def run(images=20000, words=1000, rank=64, sample_images_=20000, sample_size=200_000, workers=None, shards=None):
    figures = {"bench": "scale", "n_images": images, "words": words}
    if workers:
        rows = sharded(figures, images, words, rank, sample_images_, sample_size, workers, shards or 4 * workers)
        report(rows, figures)
        return figures
    blocks = SyntheticBlocks(images, rank=rank)
    stages = []
    with StagePeak() as peak, Timer() as t:
        reducer = Reducer(0.97).fit(blocks.subset(sample_images(images, sample_images_, 0)))
    note = f"{min(images, sample_images_)} images sampled, {reducer.n_components_} components"
    stages.append(("reduction", t.seconds, peak.mb, note))
    with StagePeak() as peak, Timer() as t:
        codebook = fit_codebook(blocks, reducer, words, sample_size, random_state=0)
    stages.append(("codebook", t.seconds, peak.mb, f"K = {words} on {min(images, sample_size // 49) * 49} descriptors"))
    keys = np.array([str(i) for i in range(images)])
    with StagePeak() as peak, Timer() as t:
        counts, _, _ = compute_histograms(blocks, keys, reducer, codebook)
    stages.append(("histograms", t.seconds, peak.mb, f"{images / t.seconds:.0f} images/s assigned"))
    figures["assignment_ips"] = round(images / t.seconds, 1)
    with StagePeak() as peak, Timer() as t:
        data = WeightedHistograms.from_codebook(counts, 49, np.arange(images), codebook)
        sparse_neighbours(data, k=5)
    stages.append(("neighbours", t.seconds, peak.mb, f"exact, sparse method, the shipped {data.distance}"))
    for name, seconds, mb, _ in stages:
        figures[f"{name}_seconds"] = round(seconds, 1)
        figures[f"{name}_peak_rss_mb"] = round(mb)
    rows = [(name, f"{seconds:8.1f} s  peak RSS {mb:6.0f} MB  {note}") for name, seconds, mb, note in stages]
    report(rows, figures)
    return figures


def sharded(figures, images, words, rank, sample_images_, sample_size, workers, shards):
    """The pipeline's sharded histograms and neighbours by 1 worker of one core, then by
    ``workers`` (``benchmarks.shards``), side by side: rows of the report; figures added."""
    with tempfile.TemporaryDirectory(prefix="shards-") as folder:
        prepared, timed, identical = run_sharded(
            folder, images, rank, words, sample_images_, sample_size, workers, shards
        )
    rows = [
        (
            "feature store",
            f"{prepared['store_seconds']:8.1f} s  the inventory task, then {images} images' synthetic descriptors written",
        ),
        (
            "night to the codebook",
            f"{prepared['to_codebook_seconds']:8.1f} s  feature shards (nothing to extract), reducer, codebook: the real tasks",
        ),
    ]
    figures.update(prepared)
    for n, stages in timed.items():
        for stage, seconds in stages.items():
            figures[f"{stage}_{n}_workers"] = seconds
        for stage in ("histograms", "neighbours"):
            rows.append(
                (f"{stage}, {n} worker(s)", f"{stages[f'{stage}_seconds']:8.1f} s  {shards} shards, one core each")
            )
    for stage in ("histograms", "neighbours"):
        speedup = figures[f"{stage}_seconds_1_workers"] / figures[f"{stage}_seconds_{workers}_workers"]
        figures[f"{stage}_speedup"] = round(speedup, 2)
        rows.append((f"{stage}: {workers} workers against 1", f"{speedup:.2f} times sooner"))
    figures.update(workers=workers, shards=shards, identical=identical)
    rows.append(("identical similarities.hdf5", str(identical)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--rank", type=int, default=64, help="rank of the simulated descriptors")
    parser.add_argument("--sample-images", type=int, default=20000, help="[reduction] sample_images")
    parser.add_argument("--sample-size", type=int, default=200_000, help="[codebook] sample_size")
    parser.add_argument(
        "--workers",
        type=int,
        help="the histograms and neighbours in shards by this many workers of one core each on "
        "a local luigid, beside 1 worker (benchmarks.shards)",
    )
    parser.add_argument("--shards", type=int, help="shards of each stage, with --workers (default 4 per worker)")
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("scale", args, argv):
        run(args.images, args.words, args.rank, args.sample_images, args.sample_size, args.workers, args.shards)


if __name__ == "__main__":
    main()
