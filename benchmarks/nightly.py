"""A night of a large collection: what the stages after extraction cost on a first full run
and on a night with few changes, and whether the night's neighbours equal a full search.

    python -m benchmarks.nightly [--images 100000] [--added 1000] [--changed 100] [--removed 100]
        [--verdicts 0] [--words 8500] [--database postgresql|sqlite|none] [--check full|N]
        [--parts search|files|search,files] [--shards 16] [--cold]

The collection is simulated after extraction, as in ``benchmarks.scale``: its histograms are
synthetic word counts (word frequencies as rank**-0.6, ``benchmarks.neighbours``), the word
weights are frozen from them as a codebook keeps them, and the night's new and changed
images are real synthetic descriptors assigned by the pipeline's own code (an 8,500-word
codebook drawn from them: the night assigns, it does not fit). Every other step is the
pipeline's: the histograms' reuse and rewrite, the neighbour search (full, then
incremental), similarities.hdf5 with its keys and changed rows, and the CMS load (whole,
then only the changed rows) into a table of its own, dropped afterwards.

``--verdicts N`` adds curators' verdicts: the first run honours N of them (random pairs, one in
five judged right), and the night N more, as curators give them after reading the lists (four
in five judge a random image's first neighbour wrong, the others a random pair right), read
and checked by the pipeline's own code and honoured by its search.

``--rerank on`` re-ranks the lists by geometric verification (``[neighbours] rerank``): every
image's short list is searched and verified, the night verifies only the pairs it has not
verified before, and the check compares the re-ranked lists. The simulated words are the
synthetic counts' words, placed on the grid in word order, and the threshold is the first
run's 99th percentile of scores (no self-check runs here): the cost is the pipeline's, the
lists' order is no measure of quality.

``--check full`` (the default) compares the night's neighbours with a full search of the
night's collection with the same verdicts, every row; ``--check N`` with N random rows of it
and every judged image (for a million images,
where a full search takes about half an hour). The night starts from the first run's files,
its memory freed: ``night_peak_rss_mb`` is the process's largest resident size during the
night's stages.

``--parts files`` measures instead (``--parts search,files`` also) the stages that read the
collection's files and lists, on as many real (empty) files under ``PPN<id>/`` folders with
their ID mapping in a CSV file, changed the same way: the inventory (mapping read, folders
scanned, joined, compared with the first run's inventory, saved), what one of ``--shards``
feature shards reads to find its images still to extract, the features index (the store's
catalog brought up to date), and what the report reads. ``--cold`` empties the kernel's
page, inode and directory caches first (root only), as a night finds them after a day of
other work.
"""

import argparse
import dataclasses
import os
import tempfile
import uuid

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pipeline import cms, collection, histograms, output, store
from pipeline.codebook import Codebook
from pipeline.extraction import shard_of
from pipeline.h5io import read_attrs
from pipeline.histograms import compute_histograms
from pipeline.reduction import Reducer
from pipeline.search import NeighbourSettings, NightSearch, why_full
from pipeline.settings import MAX_ASSIGN
from pipeline.store import FeatureStore
from pipeline.verdicts import COLUMNS as VERDICT_COLUMNS
from pipeline.verdicts import check_verdicts
from pipeline.verify import Verifier
from pipeline.weighting import IDF_SCALE, WeightedHistograms, counts_weights

from .cms import URLS
from .common import StagePeak, Timer, add_record_option, peak_rss_mb, recording, report
from .neighbours import synthetic_counts
from .synthetic import SyntheticBlocks

#: The shipped settings; N_LOCAL descriptors per image (ResNet50's last stage at 224 pixels).
SETTINGS, N_LOCAL = NeighbourSettings(), 49
K = SETTINGS.k


class Stages:
    """Seconds and peak RSS of each named stage, printed as rows and kept as figures."""

    def __init__(self):
        self.rows, self.figures, self.night_peak = [], {}, 0.0
        self.seconds = {}  # each stage's seconds, unrounded: the sums of many short stages

    def run(self, name, function, note=""):
        with StagePeak() as peak, Timer() as t:
            result = function()
        self.rows.append((name, f"{t.seconds:8.1f} s  peak RSS {peak.mb:6.0f} MB  {note}"))
        self.last_peak = peak.mb
        if name.startswith("night"):
            self.night_peak = max(self.night_peak, peak.mb)
        key = name.replace(": ", "_").replace(" ", "_").replace(",", "").replace(".", "_")
        self.figures[f"{key}_seconds"] = round(t.seconds, 2)
        self.seconds[key] = t.seconds
        return result, t.seconds


def weigh(counts, ids, weights):
    """The shipped distance's weighted histograms, with the frozen word weights (the synthetic
    collection has no codebook to keep them)."""
    distance = SETTINGS.distance
    return WeightedHistograms(
        counts, N_LOCAL, ids, distance.weighting, distance.metric, weights=weights, power=distance.power
    )


def basis(words):
    """What the simulated run's distances depend on, recorded in its similarities.hdf5 as the
    pipeline records its basis: the settings and the codebook."""
    return f"{SETTINGS.identity()} {words} words"


def verdict_rows(rng, ids, n, day, first_neighbours=None):
    """``n`` verdict rows as curators write them on ``day``: with ``first_neighbours`` (each image's
    first neighbour, as IDs) four in five judge a random image's first neighbour wrong, else a
    random pair; the others judge a random pair right."""
    n_wrong = int(round(0.8 * n))
    a = rng.choice(ids, n, replace=False)
    b = rng.choice(ids, n)
    if first_neighbours is not None:
        b[:n_wrong] = first_neighbours[np.searchsorted(ids, a[:n_wrong])]
    b = np.where(a == b, ids[(np.searchsorted(ids, b) + 1) % len(ids)], b)
    verdict = np.where(np.arange(n) < n_wrong, "wrong", "right")
    return pd.DataFrame(
        {
            "image_id": a,
            "similar_image_id": b,
            "verdict": verdict,
            "verdict_time": f"{day}T15:00:00Z",
            "author": "",
            "where": [f"row {i}" for i in range(n)],
        }
    )[[*VERDICT_COLUMNS, "where"]]


def cells_of(counts):
    """Words per cell that give the synthetic ``counts`` (each row holding N_LOCAL words), in the
    order of the words: what histograms.h5 keeps beside the counts."""
    return np.repeat(counts.indices, counts.data).reshape(-1, N_LOCAL).astype(histograms.word_type(counts.shape[1]))


def first_run(stages, ids, keys, words, engine, database, destination, folder, n_verdicts):
    """The first run: every image searched, ``first.hdf5`` and ``first-histograms.h5`` written
    under ``folder``, every row loaded. Returns the full search's seconds, the word weights and
    the verdict rows it honoured."""
    counts = synthetic_counts(len(ids), words, seed=0).astype(np.int32)
    first_path = os.path.join(folder, "first.hdf5")
    weights = counts_weights(
        counts, SETTINGS.distance.weighting
    )  # frozen from the collection, as a codebook keeps them
    ppn, filename = np.array([f"{i // 10}" for i in ids]), np.array([f"{i:08d}.jpg" for i in ids])
    data, _ = stages.run("first: weighting", lambda: weigh(counts, ids, weights))
    rows = verdict_rows(np.random.default_rng(5), ids, n_verdicts, "2026-01-01")
    honoured = check_verdicts(rows, ids, k=K)[0]
    verifier = Verifier(cells_of(counts), verification_weights(counts)) if SETTINGS.rerank else None
    search = NightSearch(data, SETTINGS, honoured.judgements(ids), why_full=why_full(), verifier=verifier)
    lists, full = stages.run("first: neighbours, full", lambda: search.lists())
    threshold = verification_threshold(lists)
    nearest, distances, raw, raw_distances = lists.ranked(K, threshold, honoured.judgements(ids))
    stages.run(
        "first: similarities.hdf5",
        lambda: output.write_similarities(
            first_path,
            ids,
            ppn,
            filename,
            nearest,
            distances,
            {"digest": "first", "basis": basis(words)},
            keys=keys,
            raw=(lists.judged, raw, raw_distances),
            verdicts=honoured,
            short=lists if SETTINGS.rerank else None,
        ),
    )
    stages.run(
        "first: histograms.h5",
        lambda: histograms.save_histograms(
            os.path.join(folder, "first-histograms.h5"), keys, counts, N_LOCAL, {}, words=cells_of(counts)
        ),
    )
    if engine is not None:
        stages.run(
            f"first: {database} load, every row",
            lambda: cms.load_lists(engine, destination, output.read_similarities(first_path), "first", "2026-01-01"),
        )
    return full, weights, rows, threshold, verification_weights(counts)


def verification_weights(counts):
    """The words' idf in the simulated collection, as the verification weighs them (``Verifier.of_codebook``)."""
    return counts_weights(counts, "tfidf") / IDF_SCALE


def verification_threshold(lists):
    """The score a simulated run's pairs must reach to be verified (its words are synthetic: no
    self-check sets it): the 99th percentile of its short lists' scores, or None without re-ranking."""
    return float(np.quantile(lists.scores, 0.99)) if lists.scores is not None else None


def descriptors_codebook(blocks, words, seed=0):
    """A reducer fitted on 2,000 simulated images and ``words`` of their reduced descriptors as words."""
    sample = blocks.subset(np.arange(min(2000, blocks.n_images)))
    reducer = Reducer(0.97, "l2", "l2").fit(sample)
    reduced = np.concatenate([reducer.transform(b).reshape(-1, reducer.n_components_) for b in sample])
    codebook = Codebook(words, seed)
    codebook.centers_ = reduced[np.random.default_rng(seed).choice(len(reduced), words, replace=False)]
    codebook.inertia_, codebook.documents_ = 0.0, 1
    codebook.document_frequency_ = np.zeros((MAX_ASSIGN, words), dtype=np.int64)
    return reducer, codebook


def night_collection(images, added, changed, removed, seed=1):
    """The night's collection from the first night's ``images``: positions of the first night's
    images kept, which of them changed, and the new images' IDs (after the first night's)."""
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.choice(images, images - removed, replace=False))
    changed_at = np.sort(rng.choice(len(kept), changed, replace=False))
    return kept, changed_at, images + 1 + np.arange(added)


def write_files(content, ids, text=""):
    """Image files ``PPN<id // 10>/<id>.jpg`` under ``content`` holding ``text`` (empty: not decodable,
    which the stages measured here never do)."""
    for i in ids:
        folder = os.path.join(content, f"PPN{i // 10}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:08d}.jpg"), "w") as f:
            f.write(text)


def write_mapping(path, ids):
    with open(path, "w") as f:
        f.write("id,ppn,filename\n")
        f.writelines(f"{i},PPN{i // 10},{i:08d}.jpg\n" for i in ids)


def take_inventory(content, mapping_csv, previous_path, path):
    """What the Inventory stage does: the ID mapping read, the folder scanned and joined with it,
    compared with the previous inventory, saved."""
    inventory = collection.take_inventory(content, collection.read_mapping(mapping_csv), "the mapping")
    previous = [f.relpath for f in collection.load_inventory(previous_path).files] if previous_path else []
    removed = collection.removed_images(previous, inventory)
    collection.save_inventory(path, inventory, {"removed": len(removed)})
    return inventory


def shard_reads(inventory_path, feature_store, shard, shards):
    """What a FeatureShard reads to find its images still to extract."""
    files = [f for f in collection.load_inventory(inventory_path).files if shard_of(f.relpath, shards) == shard]
    done, rejected = feature_store.scan()
    return [f for f in files if f.key not in done and f.key not in rejected]


def extract_empty(feature_store, keys, batch=1000):
    """Chunks of the store for ``keys``, with one-value descriptors: the extraction is not measured."""
    for start in range(0, len(keys), batch):
        part = keys[start : start + batch]
        feature_store.write_chunk(part, np.zeros((len(part), 1, 1), dtype=np.float32), {})


def files_night(stages, images, added, changed, removed, tmp, shards, cold):
    """The stages of a night that read the collection's files and lists, on ``images`` real (empty)
    files: the inventory, a feature shard's reads, the features index and the report's reads."""
    content, mapping_csv = os.path.join(tmp, "content"), os.path.join(tmp, "ids.csv")
    first_path, night_path = os.path.join(tmp, "first-inventory.h5"), os.path.join(tmp, "inventory.h5")
    ids = np.arange(1, images + 1)
    write_files(content, ids)
    write_mapping(mapping_csv, ids)
    first = take_inventory(content, mapping_csv, None, first_path)
    feature_store = FeatureStore(os.path.join(tmp, "store"))
    os.makedirs(feature_store.chunk_dir)
    extract_empty(feature_store, [f.key for f in first.files])
    feature_store.update_catalog()
    # the night of the search's benchmark: images removed, changed (rewritten) and added
    kept, changed_at, new_ids = night_collection(images, added, changed, removed)
    for i in np.setdiff1d(ids, ids[kept]):
        os.remove(os.path.join(content, f"PPN{i // 10}", f"{i:08d}.jpg"))
    write_files(content, ids[kept][changed_at], "changed")
    write_files(content, new_ids)
    write_mapping(mapping_csv, np.concatenate([ids[kept], new_ids]))
    if cold:  # the page, inode and directory caches emptied, as after a day of other work
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    note = "caches emptied first" if cold else "files just written: caches warm"
    night, _ = stages.run(
        "files: inventory",
        lambda: take_inventory(content, mapping_csv, first_path, night_path),
        f"{images + added - removed} files scanned, {note}",
    )
    stages.run(
        "files: shard reads",
        lambda: shard_reads(night_path, feature_store, 0, shards),
        f"one feature shard of {shards}: the inventory and the store's catalog read",
    )
    done = feature_store.scan()[0]
    tonight = [f.key for f in night.files if f.key not in done]
    extract_empty(feature_store, tonight)
    features_path = os.path.join(tmp, "features.h5")
    stages.run(
        "files: features index",
        lambda: store.save_index(features_path, store.index_inventory(feature_store, night), {}),
        f"{len(tonight)} images extracted tonight; the store's catalog rewritten",
    )
    stages.run(
        "files: report reads",
        lambda: (collection.load_inventory(night_path), store.load_index(features_path)),
        "the inventory and the features index",
    )
    return {"files_scanned": len(night.files), "files_extracted_tonight": len(tonight)}


def search_night(stages, images, added, changed, removed, words, database, check, tmp, n_verdicts=0):
    """The first full run and the night of the stages after extraction (see the module); the
    figures of the night as a whole."""
    ids = np.arange(1, images + 1, dtype=np.int64)
    keys = np.array([f"PPN{i // 10}/{i:08d}.jpg 0" for i in ids])
    engine, load = None, "not measured"
    if database != "none":
        engine = cms.connect(cms.resolve_url(URLS[database] if database in URLS else database))
        if engine.url.get_backend_name() != "sqlite" and not cms.reachable(engine):
            stages.rows.append(("CMS loads", f"not measured: no {database} server answers at {cms.shown(engine.url)}"))
            engine = None
    destination = cms.Destination(
        table=f"bench_sim_{uuid.uuid4().hex[:8]}", marker_table=f"bench_load_{uuid.uuid4().hex[:8]}"
    )
    first_path, night_path = os.path.join(tmp, "first.hdf5"), os.path.join(tmp, "night.hdf5")
    first_histograms = os.path.join(tmp, "first-histograms.h5")
    try:
        # the first full run, its memory freed on return: the night starts from its files
        full, weights, first_verdicts, threshold, idf = first_run(
            stages, ids, keys, words, engine, database, destination, tmp, n_verdicts
        )
        # the night: images removed, changed and added
        kept, changed_at, new_ids = night_collection(images, added, changed, removed)
        night_ids = np.concatenate([ids[kept], new_ids])
        night_keys = np.concatenate([keys[kept], np.array([f"PPN{i // 10}/{i:08d}.jpg 0" for i in new_ids])])
        night_keys = night_keys.astype(f"U{night_keys.dtype.itemsize // 4 + 8}")  # room for the mark
        night_keys[changed_at] = np.char.add(night_keys[changed_at], " changed")
        blocks = SyntheticBlocks(len(night_ids), seed=7)
        reducer, codebook = descriptors_codebook(blocks, words)
        (night_counts, reused, night_words), _ = stages.run(
            "night: histograms",
            lambda: compute_histograms(
                blocks,
                night_keys,
                reducer,
                codebook,
                previous=(*histograms.load_counts(first_histograms)[:2], histograms.load_words(first_histograms)),
            ),
            f"{added + changed} assigned, the rest reused from the first run's file",
        )
        histograms_path = os.path.join(tmp, "histograms.h5")
        stages.run(
            "night: histograms.h5 rewritten",
            lambda: histograms.save_histograms(
                histograms_path, night_keys, night_counts, N_LOCAL, {}, words=night_words
            ),
        )
        night_ppn = np.array([f"{i // 10}" for i in night_ids])
        night_filename = np.array([f"{i:08d}.jpg" for i in night_ids])
        night_data, _ = stages.run("night: weighting", lambda: weigh(night_counts, night_ids, weights))
        night_counts = None  # freed, as by the pipeline's search, which reads the weighted copy
        earlier, _ = stages.run("night: earlier lists read", lambda: output.Earlier(first_path, night_ids, night_keys))
        # tonight's verdicts: the first run's, and as many more given after reading its lists
        first_neighbours = output.read_similarities(first_path)["neighbours"][:, 0]
        rows = pd.concat(
            [first_verdicts, verdict_rows(np.random.default_rng(6), ids, n_verdicts, "2026-01-02", first_neighbours)]
        )
        (honoured, bad, _), _ = stages.run(
            "night: verdicts checked", lambda: check_verdicts(rows, night_ids, k=K), f"{len(rows)} rows"
        )
        judgements = honoured.judgements(night_ids)
        reason = why_full(earlier=earlier, recorded_basis=read_attrs(first_path)["basis"], basis=basis(words))
        verifier = None
        if SETTINGS.rerank:
            verifier = Verifier(night_words, idf, known=earlier.known_scores() if reason is None else None)
        lists, night = stages.run(
            f"night: neighbours, {'full' if reason else 'incremental'}",
            lambda: NightSearch(night_data, SETTINGS, judgements, earlier, reason, verifier).lists(),
        )
        night_data = None  # the search released, as by the pipeline's Similarities before the write
        night_nearest, night_distances, night_raw, night_raw_distances = lists.ranked(K, threshold, judgements)
        queried = lists.queried
        stages.run(
            "night: similarities.hdf5",
            lambda: output.write_similarities(
                night_path,
                night_ids,
                night_ppn,
                night_filename,
                night_nearest,
                night_distances,
                {"digest": "night", "basis": basis(words)},
                keys=night_keys,
                earlier=earlier,
                raw=(lists.judged, night_raw, night_raw_distances),
                verdicts=honoured,
                short=lists if SETTINGS.rerank else None,
            ),
        )
        written = output.read_similarities(night_path)
        if engine is not None:
            plan, _ = stages.run(
                f"night: {database} load",
                lambda: cms.load_lists(engine, destination, written, "night", "2026-01-02"),
            )
            load = "changed rows" if plan.why_whole is None else f"every row: {plan.why_whole}"
            name, timed = stages.rows[-1]
            stages.rows[-1] = (
                name,
                f"{timed}{load} ({int(written['changed'].sum())} images' lists changed, {len(written['removed'])} removed)",
            )
        # the check: a full search of the night with the same verdicts
        if check == "full":
            rows = np.arange(len(night_ids))
        else:
            rows = np.random.default_rng(3).choice(len(night_ids), int(check), replace=False)
            rows = np.union1d(rows, judgements.rows)
        check_data = weigh(histograms.load_counts(histograms_path)[1], night_ids, weights)
        verifier = Verifier(night_words, idf) if SETTINGS.rerank else None
        full_search = NightSearch(check_data, SETTINGS, judgements, why_full=why_full(full=True), verifier=verifier)
        expected, _ = stages.run(f"check: {len(rows)} rows searched in full", lambda: full_search.lists(rows))
        expected, expected_d = expected.ranked(K, threshold, judgements)[:2]
        identical = bool(
            np.array_equal(expected, night_nearest[rows]) and np.array_equal(expected_d, night_distances[rows])
        )
    finally:
        if engine is not None:
            with engine.begin() as conn:
                for drop in (destination.table, destination.marker_table):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {engine.dialect.identifier_preparer.quote(drop)}"))
            engine.dispose()
    figures = dict(
        full_seconds=round(sum(v for k, v in stages.seconds.items() if k.startswith("first_")), 3),
        night_peak_rss_mb=round(stages.night_peak),
        night_seconds=round(sum(v for k, v in stages.seconds.items() if k.startswith("night_")), 3),
        queried=int(queried.sum()),
        verdicts=len(honoured),
        verdicts_bad=len(bad),
        judged=len(lists.judged),
        judged_queried=int(lists.judged_queried.sum()),
        changed_by_verdicts=int(
            (lists.final != lists.raw[np.searchsorted(lists.rows, lists.judged)]).any(axis=1).sum()
        ),
        changed_lists=int(written["changed"].sum()),
        night_load=load,
        reused_histograms=int(reused),
        pairs_verified=int(lists.verified),
        identical=identical,
        checked_rows=len(rows),
    )
    stages.rows.append(
        (
            "night, all stages",
            f"{figures['night_seconds']:8.1f} s  peak RSS {stages.night_peak:6.0f} MB  "
            f"(the first run's full search alone: {full:.1f} s)",
        )
    )
    stages.rows.append(("identical to a full search", f"{identical} ({len(rows)} rows compared)"))
    return figures


def run(
    images=100_000,
    added=1000,
    changed=100,
    removed=100,
    words=8500,
    database="postgresql",
    check="full",
    parts=("search",),
    shards=16,
    cold=False,
    verdicts=0,
    rerank=None,
):
    global SETTINGS
    if rerank is not None:  # the lists re-ranked, or not, whatever ships
        SETTINGS = dataclasses.replace(SETTINGS, rerank=rerank == "on")
    stages = Stages()
    figures = {"bench": "nightly", "images": images, "added": added, "changed": changed, "removed": removed}
    figures["rerank"] = "on" if SETTINGS.rerank else "off"
    figures["new_verdicts"] = verdicts
    with tempfile.TemporaryDirectory(prefix="nightly-") as tmp:
        if "search" in parts:
            figures.update(search_night(stages, images, added, changed, removed, words, database, check, tmp, verdicts))
        if "files" in parts:
            figures.update(
                files_night(stages, images, added, changed, removed, os.path.join(tmp, "files"), shards, cold)
            )
            figures["files_seconds"] = round(sum(v for k, v in stages.figures.items() if k.startswith("files_")), 1)
            stages.rows.append(("files, all stages", f"{figures['files_seconds']:8.1f} s"))
    figures.update(stages.figures)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    report(stages.rows, figures)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--added", type=int, default=1000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--removed", type=int, default=100)
    parser.add_argument(
        "--verdicts", type=int, default=0, help="verdicts honoured by the first run, and as many new ones tonight"
    )
    parser.add_argument("--words", type=int, default=8500)
    parser.add_argument("--database", default="postgresql", help="postgresql, mariadb, an SQLAlchemy URL, or none")
    parser.add_argument("--check", default="full", help="full, or a number of random rows")
    parser.add_argument(
        "--parts", default="search", help="search, files or both (search,files): what of a night is measured"
    )
    parser.add_argument("--shards", type=int, default=16, help="feature shards, for the files' part")
    parser.add_argument("--cold", action="store_true", help="empty the kernel's caches before the inventory (root)")
    parser.add_argument(
        "--rerank", choices=("on", "off"), default=None, help="re-ranked lists or not (default: as shipped)"
    )
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("nightly", args, argv):
        run(
            args.images,
            args.added,
            args.changed,
            args.removed,
            args.words,
            args.database,
            args.check,
            args.parts.split(","),
            args.shards,
            args.cold,
            args.verdicts,
            args.rerank,
        )


if __name__ == "__main__":
    main()
