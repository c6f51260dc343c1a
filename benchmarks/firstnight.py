"""A site's first night at scale: every stage after extraction, run by the pipeline's own stage
functions at the shipped settings, on synthetic descriptors shaped like ResNet50's; the
extraction itself extrapolated from this machine's recorded extraction rates.

    python -m benchmarks.firstnight [--images 1000000] [--database sqlite|postgresql|mariadb|none]

The stages: the reducer fitted on ``[reduction] sample_images`` images (``fit_reducer``), the
codebook on ``[codebook] sample_size`` descriptors at ``size = auto`` (``fit_codebook``), every
image's histogram (``compute_histograms`` at ``[histograms] assign``), the full exact search at
the shipped ``[neighbours]`` (``NightSearch``, as the first night runs it), ``similarities.hdf5``
(``write_similarities``) and the CMS load of every row (``cms.load_lists``).

The descriptors of image i are made from i alone (``benchmarks.synthetic``: 49 x 2,048, of rank
``--rank``, 256 by default: the reducer then keeps about as many components as ResNet50's
random-weight descriptors give, 238 on the ``large`` proxy collection). Making them is not the
pipeline's work: it is done on one BLAS thread (no thread of its product left spinning beside
the stage), timed apart and taken off the seconds of each stage that reads them
(reducer, codebook, histograms), and what the pipeline does instead, reading 8-bit codes from
the feature store, is measured on a store of ``--store-images`` images and counted at the same
rate per image.

The extraction line is the latest ``benchmarks.extract`` record of this machine (at ``auto``
and at int8, decoding and thumbnails included) times the images: an extrapolation, said so.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import sqlalchemy as sa

from pipeline import cms, output
from pipeline.blocks import DescriptorBlocks
from pipeline.codebook import fit_codebook
from pipeline.histograms import compute_histograms
from pipeline.reduction import fit_reducer
from pipeline.search import NeighbourSettings, NightSearch, why_full
from pipeline.settings import Codebook, Histograms, Reduction
from pipeline.store import FeatureIndex, FeatureStore
from pipeline.weighting import WeightedHistograms

from .cms import URLS
from .common import add_record_option, machine, peak_rss_mb, recording, report
from .nightly import Stages
from .performance import records
from .synthetic import SyntheticBlocks

#: The shipped settings of the stages after extraction.
SETTINGS = NeighbourSettings()


class TimedBlocks(SyntheticBlocks):
    """Synthetic descriptors whose making is timed (``made_seconds``) and whose images are
    counted (``images_read``), so that each stage that reads them is timed as it would be on a
    feature store: the making taken off, the store's reads of as many images added."""

    made_seconds, images_read = 0.0, 0

    def read(self, positions):
        started = time.perf_counter()
        try:
            return super().read(positions)
        finally:
            TimedBlocks.made_seconds += time.perf_counter() - started
            TimedBlocks.images_read += len(positions)


def read_stage(stages, name, function, read_ms, note=""):
    """``stages.run`` of a stage that reads TimedBlocks, its seconds those of the pipeline on a
    feature store (see TimedBlocks); returns its result and the seconds its making took."""
    made, images = TimedBlocks.made_seconds, TimedBlocks.images_read
    result, seconds = stages.run(name, function)
    made, images = TimedBlocks.made_seconds - made, TimedBlocks.images_read - images
    pipeline = seconds - made + read_ms * images / 1000
    stages.rows[-1] = (
        name,
        f"{pipeline:8.1f} s  ({seconds:.1f} s less {made:.1f} s making {images:,} images' synthetic descriptors, "
        f"plus the store's reads at {read_ms:.2f} ms per image)  peak RSS {stages.last_peak:.0f} MB  {note}",
    )
    key = name.replace(" ", "_")
    stages.seconds[key] = pipeline
    stages.figures[f"{key}_seconds"] = round(pipeline, 2)
    return result, made


def store_read_ms(blocks, folder, n):
    """Milliseconds per image of reading ``n`` images' descriptors back from a feature store of
    their 8-bit codes, block by block as the histograms read them (``DescriptorBlocks``)."""
    store = FeatureStore(folder)
    os.makedirs(store.chunk_dir)
    keys = np.array([f"image {i}" for i in range(n)])
    for start in range(0, n, 128):
        store.write_chunk(list(keys[start : start + 128]), blocks.read(np.arange(start, min(n, start + 128))), {})
    done, _ = store.scan()
    chunk, row = np.array([done[k][0] for k in keys]), np.array([done[k][1] for k in keys])
    index = FeatureIndex(np.arange(n), keys, keys, keys, chunk, row, [])
    stored = DescriptorBlocks(store, index)
    started = time.perf_counter()
    for start in range(0, n, 128):
        stored.read(np.arange(start, min(n, start + 128)))
    return 1000 * (time.perf_counter() - started) / n


def extraction_rates(tag):
    """This machine's latest recorded pipeline extraction rates, images/s: {precision: rate}."""
    rates = {}
    for record in records():
        if record["bench"] != "extract" or record["machine"] != tag:
            continue
        figures = record["figures"][0]
        rates[figures["precision_auto"]] = figures["pipeline_ips_auto"]
    return rates


def run(images=1_000_000, database="sqlite", store_images=2000, rank=256):
    figures = {"bench": "firstnight", "images": images, "rank": rank}
    rates = extraction_rates(machine())
    stages = Stages()
    blocks = TimedBlocks(images, rank=rank, dtype=np.float32)  # as the store gives them
    with tempfile.TemporaryDirectory() as tmp:
        read_ms = store_read_ms(
            SyntheticBlocks(store_images, rank=rank, seed=3), os.path.join(tmp, "store"), store_images
        )
    reduction, codebook_settings = Reduction, Codebook
    reducer, made = read_stage(
        stages,
        "reducer",
        lambda: fit_reducer(
            blocks,
            reduction.variance,
            reduction.descriptors,
            reduction.reduced,
            reduction.sample_images,
            reduction.seed,
        ),
        read_ms,
    )
    codebook, made_here = read_stage(
        stages,
        "codebook",
        lambda: fit_codebook(
            blocks, reducer, codebook_settings.size, codebook_settings.sample_size, codebook_settings.seed
        ),
        read_ms,
        f"reducer: {reducer.n_components_} components",
    )
    made += made_here
    keys = np.array([f"PPN{i // 20}/{i:08d}.jpg 0" for i in range(images)])
    (counts, _, _), made_here = read_stage(
        stages,
        "histograms",
        lambda: compute_histograms(blocks, keys, reducer, codebook, assign=Histograms().assign),
        read_ms,
        f"K = {codebook.size}",
    )
    made += made_here
    with tempfile.TemporaryDirectory() as tmp:
        ids = np.arange(1, images + 1, dtype=np.int64)
        ppn, filename = np.array([f"{i // 20}" for i in ids]), np.array([f"{i:08d}.jpg" for i in ids])
        data, _ = stages.run(
            "weighting",
            lambda: WeightedHistograms.from_codebook(
                counts, blocks.n_local(), ids, codebook, Histograms.assign, SETTINGS.distance
            ),
        )
        counts = None  # the search reads the weighted copy
        lists, _ = stages.run(
            "neighbours, full", lambda: NightSearch(data, SETTINGS, why_full=why_full(full=True)).lists()
        )
        nearest, distances = lists.ranked(SETTINGS.k, None, None)[:2]
        path = os.path.join(tmp, "similarities.hdf5")
        stages.run(
            "similarities.hdf5",
            lambda: output.write_similarities(
                path, ids, ppn, filename, nearest, distances, {"digest": "first"}, keys=keys
            ),
        )
        if database != "none":
            url = f"sqlite:///{os.path.join(tmp, 'cms.sqlite')}" if database == "sqlite" else URLS[database]
            engine = cms.connect(cms.resolve_url(url))
            destination = cms.Destination(table="bench_first_similarity", marker_table="bench_first_load")
            try:
                stages.run(
                    f"{database} load, every row",
                    lambda: cms.load_lists(engine, destination, output.read_similarities(path), "first", "2026-01-01"),
                )
            finally:
                with engine.begin() as conn:
                    for drop in (destination.table, destination.marker_table):
                        conn.execute(sa.text(f"DROP TABLE IF EXISTS {engine.dialect.identifier_preparer.quote(drop)}"))
                engine.dispose()
    after = sum(stages.seconds.values())
    rows = [("images; descriptors made (not timed as the pipeline's)", f"{images:,}; {made:.0f} s")]
    rows += [(name, timed) for name, timed in stages.rows]
    rows.append(
        ("every stage after extraction", f"{after:8.1f} s ({after / 60:.1f} min), peak RSS {peak_rss_mb():.0f} MB")
    )
    for name, seconds in stages.seconds.items():
        rows.append((f"  share: {name}", f"{100 * seconds / after:5.1f} %"))
    for precision, rate in sorted(rates.items()):
        rows.append(
            (
                f"extraction at {precision}, extrapolated ({rate} images/s, benchmarks.extract)",
                f"{images / rate / 3600:.2f} h",
            )
        )
    figures.update(
        {f"{name}_seconds": round(seconds, 1) for name, seconds in stages.seconds.items()},
        after_extraction_seconds=round(after, 1),
        components=int(reducer.n_components_),
        words=int(codebook.size),
        store_read_ms_per_image=round(read_ms, 3),
        synthetic_seconds=round(made, 1),
        peak_rss_mb=round(peak_rss_mb()),
        extraction_hours={p: round(images / r / 3600, 2) for p, r in rates.items()},
    )
    report(rows, figures)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--database", default="sqlite", choices=("sqlite", *URLS, "none"))
    parser.add_argument("--store-images", type=int, default=2000, help="images of the store the reads are timed on")
    parser.add_argument("--rank", type=int, default=256, help="rank of the synthetic descriptors")
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("firstnight", args, argv):
        run(args.images, args.database, args.store_images, args.rank)


if __name__ == "__main__":
    main()
