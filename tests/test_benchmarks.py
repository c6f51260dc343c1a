"""The benchmarks run and end with their JSON figures (no timing is asserted)."""

import json
import os

import numpy as np
import pytest

from benchmarks import extract, reduce


def last_json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_recorded_run_appends_a_machine_tagged_record_and_the_page_shows_the_latest(capsys, monkeypatch, tmp_path):
    from benchmarks import common, performance

    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    for images, record in ((20, ["--record"]), (20, []), (30, ["--record"]), (20, ["--record"])):
        reduce.main(["--images", str(images), "--channels", "64", *record])
    records = [json.loads(line) for line in (tmp_path / "reduce.jsonl").read_text().splitlines()]
    assert [r["command"] for r in records] == [
        "python -m benchmarks.reduce --images 20 --channels 64",
        "python -m benchmarks.reduce --images 30 --channels 64",
        "python -m benchmarks.reduce --images 20 --channels 64",
    ]  # the run without --record left no record
    first = records[0]
    assert first["machine"]["cores"] >= 1 and first["machine"]["cpu"] and first["date"] and first["commit"]
    assert first["figures"][0]["bench"] == "reduce" and first["figures"][0]["descriptors"] == 20 * 49
    assert first["rows"][0] == [
        "descriptors x channels -> components",
        f"980 x 64 -> {first['figures'][0]['components']}",
    ]
    (tmp_path / "old.jsonl").write_text(
        '{"bench": "old", "seconds": 1}\n'
    )  # written by hand before --record: history only
    page = performance.page(performance.records(str(tmp_path)))
    assert page.count("### `python -m benchmarks.reduce") == 2  # the latest of each command on this machine
    assert common.machine_name(first["machine"]) in page and "old" not in page
    latest = records[2]["rows"][1][1]
    assert f"| streamed exact fit (X^T X + eigh), s | {latest} |" in page


def test_reduce_benchmark_prints_its_figures(capsys):
    reduce.run(images=20, channels=64)
    figures = last_json_line(capsys)
    assert figures["bench"] == "reduce" and figures["descriptors"] == 20 * 49
    assert figures["max_component_mismatch"] < 1e-4  # the streamed fit found sklearn's components


@pytest.mark.slow
@pytest.mark.resnet
@pytest.mark.parametrize("precision, device", [("bfloat16", "CPU (OpenVINO)"), ("int8", "CPU (OpenVINO)")])
def test_extract_benchmark_prints_its_figures(capsys, monkeypatch, tmp_path, precision, device):
    monkeypatch.setenv("HOME", str(tmp_path))  # OpenVINO's telemetry decision, written under $HOME
    extract.run(images=6, batch_size=4, per_image=2, precision=precision, masters=4, rounds=1, pages=((350, 500),))
    figures = last_json_line(capsys)
    assert figures["bench"] == "extract" and figures["precision_auto"] == precision
    speeds = ("pipeline_ips_float32", "pipeline_ips_auto", "bare_ips_float32", "bare_ips_auto", "per_image_predict_ips")
    assert all(figures[k] > 0 for k in (*speeds, "bare_ips_openvino_float32", "decode_ms", "commit_ms_per_image"))
    assert figures["auto_vs_float32"] == pytest.approx(
        figures["pipeline_ips_auto"] / figures["pipeline_ips_float32"], 0.01
    )
    # 8-bit codes, uncompressed; the checksums' chunk index weighs most on these batches of 4 (1.4 % at 16)
    assert 49 * 2048 < figures["store_bytes_per_image"] < 1.1 * 49 * 2048
    assert figures["device"].endswith(device) and not figures["gpu_used"]
    # the night's decoders make each image's views: the pipeline lines include them, their cost is shown
    assert figures["pipeline_makes_views"] and figures["decode_ms_with_views"] > figures["decode_ms"]
    assert 5_000 < figures["views_bytes_per_image"] < 200_000
    decoders = {name: row["decoder"] for name, row in figures["masters_decode"].items()}
    assert decoders["JPEG q90"] == "Pillow draft" and decoders["PNG RGB"] == "libvips"
    assert (
        decoders["JPEG 2000 RGB"] == "Pillow levels" and figures["masters_decode"]["JPEG 2000 RGB"]["libvips"] is None
    )
    assert all(row["pipeline"] > 0 and row["decoder_peak_mb"] > 0 for row in figures["masters_decode"].values())
    assert {f"masters_ips_{p}" for p in (precision, "int8")} <= set(figures) and figures["masters_ips_int8"] > 0


def test_firstnight_benchmark_times_every_stage_after_extraction(capsys):
    from benchmarks import firstnight
    from pipeline.codebook import auto_size

    firstnight.run(images=400, store_images=64)
    figures = last_json_line(capsys)
    stages = ("reducer", "codebook", "histograms", "weighting", "neighbours_full", "similarities_hdf5")
    assert figures["bench"] == "firstnight" and figures["images"] == 400
    assert all(figures[f"{stage}_seconds"] >= 0 for stage in (*stages, "sqlite_load_every_row"))
    # the shipped settings: every descriptor sampled at this size, K = auto of them
    assert figures["words"] == auto_size(400 * 49) and figures["components"] > 0
    assert figures["store_read_ms_per_image"] > 0 and figures["synthetic_seconds"] > 0
    total = sum(figures[f"{stage}_seconds"] for stage in (*stages, "sqlite_load_every_row"))
    assert figures["after_extraction_seconds"] == pytest.approx(total, abs=0.5)


def test_serve_benchmark_browses_over_a_nights_swap_without_an_error(capsys, monkeypatch, tmp_path):
    from benchmarks import serve

    monkeypatch.chdir(tmp_path)  # [paths] artifacts: an empty folder, no run to query
    serve.run(images=300, clients=4, seconds=3, requests=20)
    figures = last_json_line(capsys)
    assert figures["bench"] == "serve" and figures["images"] == 300 and figures["browse_errors"] == 0
    assert 0 < figures["image_page_p95_ms"] and 0 < figures["search_by_ID_p95_ms"] and figures["rss_mb"] > 0
    assert "upload_first_s" not in figures  # no run in the test's artifacts folder: said, not measured
    assert figures["upload_search_s"] >= 0 and figures["upload_search_mb"] > 0
    assert figures["swap_served"]  # the night of the swap was served by the end
    if os.path.exists(serve.CHROMIUM):  # .ci/run installs it
        assert figures["map_step_ms"] > 0 and figures["map_step_p95_ms"] >= figures["map_step_ms"]


def test_neighbours_benchmark_prints_its_figures(capsys):
    from benchmarks import neighbours

    neighbours.run(images=60, words=(20,), tree_queries=60)
    figures = last_json_line(capsys)
    assert figures["bench"] == "neighbours"
    assert [run["distance"] for run in figures["runs"]] == ["tfidf/cosine", "raw/euclidean"]
    assert all(run["identical"] is True for run in figures["runs"])


def test_scale_benchmark_prints_each_stage(capsys):
    from benchmarks import scale

    scale.run(images=300, words=20, rank=8, sample_images_=100, sample_size=2000)
    figures = last_json_line(capsys)
    assert figures["bench"] == "scale" and figures["n_images"] == 300
    for stage in ("reduction", "codebook", "histograms", "neighbours"):
        assert figures[f"{stage}_peak_rss_mb"] > 0 and figures[f"{stage}_seconds"] >= 0
    assert figures["assignment_ips"] > 0


@pytest.mark.slow  # a luigid and worker processes, twice
def test_scale_benchmark_shards_the_stages_over_workers_on_luigid(capsys):
    from benchmarks import scale

    scale.run(images=300, words=20, rank=8, sample_images_=100, sample_size=2000, workers=2, shards=4)
    figures = last_json_line(capsys)
    assert figures["identical"] is True and figures["workers"] == 2 and figures["shards"] == 4
    assert figures["store_seconds"] > 0 and figures["to_codebook_seconds"] > 0  # the real tasks up to the codebook
    for stage in ("histograms", "neighbours"):
        assert figures[f"{stage}_seconds_1_workers"] > 0 and figures[f"{stage}_seconds_2_workers"] > 0
        assert figures[f"{stage}_speedup"] > 0


def test_cms_benchmark_prints_its_figures(capsys):
    from benchmarks import cms

    cms.run(images=50, databases=("sqlite",))
    figures = last_json_line(capsys)
    assert figures["bench"] == "cms" and figures["rows"] == 250 and figures["sqlite_rows_per_s"] > 0


def test_nightly_benchmark_checks_the_night_against_a_full_search(capsys, tmp_path):
    from benchmarks import nightly

    nightly.run(
        images=400,
        added=12,
        changed=3,
        removed=5,
        words=40,
        database=f"sqlite:///{tmp_path}/cms.sqlite",
        parts=("search", "files"),
        verdicts=10,
    )
    figures = last_json_line(capsys)
    assert figures["bench"] == "nightly" and figures["identical"] is True and figures["checked_rows"] == 407
    assert figures["reused_histograms"] == 392 and figures["queried"] >= 15 and figures["night_seconds"] > 0
    assert figures["changed_lists"] >= 15 and figures["peak_rss_mb"] > 0
    assert figures["night_load"] == "changed rows"  # the load plan's: the table holds the first run's load
    # the night's verdicts: the first run's 10 and 10 new ones (less those on removed images), honoured
    assert 15 <= figures["verdicts"] + figures["verdicts_bad"] <= 20 and figures["changed_by_verdicts"] > 0
    assert 0 < figures["judged_queried"] < figures["judged"]  # the first run's judged images mostly kept
    # the files' night: every file of the night's collection listed, the added and changed ones extracted
    assert figures["files_scanned"] == 407 and figures["files_extracted_tonight"] == 15
    assert {"files_inventory_seconds", "files_features_index_seconds"} <= set(figures)


def test_nightly_benchmark_re_ranked_verifies_only_the_new_pairs_and_equals_a_full_search(capsys, tmp_path):
    from benchmarks import nightly

    shipped = nightly.SETTINGS
    try:
        nightly.run(images=300, added=8, changed=3, removed=4, words=40, database="none", verdicts=6, rerank="on")
    finally:
        nightly.SETTINGS = shipped
    figures = last_json_line(capsys)
    assert figures["rerank"] == "on" and figures["identical"] is True and figures["checked_rows"] == 304
    width = min(nightly.SETTINGS.candidates, 303)
    assert 0 < figures["pairs_verified"] < 304 * width / 4  # the unchanged pairs' scores kept


#: A proxy collection small enough for a test: 3 groups and 8 distractors from scikit-image's photos.
TINY = dict(name="tiny", sources=("samples",), groups=3, distractors=8, cell=128, longest=512, seed=7)


def test_proxy_collections_are_reproducible_with_groups_and_distractors(tmp_path):
    import csv
    import hashlib

    from benchmarks import proxies

    spec = proxies.Spec(**TINY)
    summary = proxies.make_collection(spec, tmp_path / "a")
    again = proxies.make_collection(spec, tmp_path / "b")

    def files(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }

    assert files(tmp_path / "a") == files(tmp_path / "b")  # the same spec writes the same files
    assert summary == again and all(2 <= s <= 12 for s in summary["group_sizes"])
    labels = list(csv.DictReader((tmp_path / "a" / "labels.csv").open()))
    mapping = list(csv.DictReader((tmp_path / "a" / "image_ids.csv").open()))
    assert [r["id"] for r in labels] == [r["id"] for r in mapping] and len(mapping) == summary["images"]
    distractors = [r for r in labels if r["label"].startswith("distractor")]
    assert len(distractors) == 8 and len({r["label"] for r in distractors}) == 8
    for row in mapping:
        assert (tmp_path / "a" / row["ppn"] / row["filename"]).is_file()
    # a cached collection of the same spec is kept, another spec makes it anew
    assert proxies.ensure_collection(spec, tmp_path / "a") == summary
    other = proxies.ensure_collection(proxies.Spec(**{**TINY, "groups": 2}), tmp_path / "a")
    assert other["groups"] == 2


def test_every_alteration_gives_an_rgb_image():
    import numpy as np
    from PIL import Image

    from benchmarks import proxies

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    for kind in proxies.ALTERATIONS:
        altered = proxies.alter(image, kind, np.random.default_rng(1))
        assert altered.mode == "RGB" and min(altered.size) >= 8, kind


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_quality_benchmark_scores_the_shipped_defaults_beside_the_original(capsys, monkeypatch, tmp_path, precision):
    from benchmarks import proxies, quality

    from .conftest import luigi_config, pipeline_config

    monkeypatch.setattr(proxies, "COLLECTIONS", (proxies.Spec(**TINY),))
    monkeypatch.setenv("HOME", str(tmp_path))  # OpenVINO's telemetry decision, written under $HOME
    arguments = ["--work", str(tmp_path / "work"), "--selfcheck", "2", "--json", str(tmp_path / "rows.json")]
    with luigi_config(monkeypatch, pipeline_config(tmp_path, codebook__size=40, resnet__calibration_images=16)):
        assert quality.main([*arguments, "--precision", precision]) == 0
    figures = last_json_line(capsys)
    assert figures["bench"] == "quality" and figures["defaults"]["size"] == "40" and figures["precision"] == precision
    # at int8, one trunk per image preparation, calibrated on the collection, for it and its altered copies
    assert len(list((tmp_path / "work").rglob("int8-*.xml"))) == (2 if precision == "int8" else 0)
    scores = figures["collections"]["tiny"]
    flipped = f"shipped rerank={'off' if figures['defaults']['rerank'] == 'on' else 'on'}"
    for who in ("shipped", "original", flipped):  # the shipped defaults with and without the verification
        assert set(scores[who]) == set(quality.MEASURES) and 0 <= scores[who]["map"] <= 1
    assert figures["shipped_beats_original"]["tiny"] == (scores["shipped"]["map"] >= scores["original"]["map"])
    rows = json.loads((tmp_path / "rows.json").read_text())["collections"][0]["rows"]
    assert [r["name"] for r in rows] == ["shipped", "original", flipped] and rows[1]["layer"] == "conv5_block3_3_conv"
    assert (rows[0]["colour"], rows[0]["trim"], rows[1]["colour"], rows[1]["trim"]) == ("grey", True, "rgb", False)


def test_quality_grid_varies_one_setting_at_a_time():
    from benchmarks.quality import ALTERNATIVES, ORIGINAL, grid, name_of

    defaults = {**ORIGINAL, "metric": "cosine"}
    configs = grid(defaults)
    assert configs[:2] == [defaults, ORIGINAL] and len(configs) == len({json.dumps(c, sort_keys=True) for c in configs})
    for config in configs[2:]:
        assert sum(config[k] != defaults[k] for k in config) == 1 or sum(config[k] != ORIGINAL[k] for k in config) == 1
    assert name_of({**defaults, "assign": 2}, defaults) == "shipped assign=2"
    assert {c["layer"] for c in configs} == set(ALTERNATIVES["layer"])


def test_a_stop_list_weighs_the_most_widespread_words_as_nothing():
    import scipy.sparse as sp

    from benchmarks.quality import ORIGINAL, name_of, stop_words

    counts = sp.csr_matrix(np.array([[3, 1, 0, 0], [2, 0, 1, 0], [1, 1, 0, 2], [4, 1, 0, 0]]))  # word 0 in 4 images
    weights = np.array([50, 70, 90, 110])
    np.testing.assert_array_equal(stop_words(counts, weights, 0.25), [1, 70, 90, 110])
    np.testing.assert_array_equal(stop_words(counts, weights, 0.5), [1, 1, 90, 110])
    assert stop_words(counts, weights, 0.0) is weights and weights[0] == 50  # none stopped, nothing changed
    defaults = {**ORIGINAL, "metric": "cosine"}
    assert name_of({**defaults, "stop": 0.01}, defaults) == "shipped stop=0.01"


@pytest.mark.slow
def test_copies_benchmark_scores_same_record_and_the_copy_groups(capsys, monkeypatch, tmp_path):
    from benchmarks import copies, proxies

    from .conftest import luigi_config, pipeline_config

    tiny = proxies.Spec(**{**TINY, "uniform_records": True})
    monkeypatch.setattr(proxies, "COLLECTIONS", (tiny,))
    monkeypatch.setattr(proxies, "EXTRA", ())
    monkeypatch.setattr(proxies, "BOOKS", ())
    arguments = ["--work", str(tmp_path / "work"), "--selfcheck", "4", "--precision", "float32"]
    with luigi_config(monkeypatch, pipeline_config(tmp_path, codebook__size=40)):
        assert copies.main(arguments) == 0
    figures = last_json_line(capsys)["collections"]["tiny"]
    assert set(figures["same_record"]) == set(copies.SAME_RECORD)
    assert figures["same_record"]["exclude"]["own_record_share"] == 0.0
    shares = [figures["same_record"][s]["own_record_share"] for s in ("exclude", "at_most 1", "at_most 2", "keep")]
    assert shares == sorted(shares)  # each looser limit lets in at least as many of the own record
    rows = [figures["copies"][str(q)] for q in copies.QUANTILES]
    assert [r["threshold"] for r in rows] == sorted(r["threshold"] for r in rows)
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
    assert len(figures["curve"]) == copies.CURVE
    later = figures["nights"]
    assert later["scratch"]["regrouped"] == later["scratch"]["sets"] and later["unchanged"]["regrouped"] == 0
    assert later["1% changed"]["regrouped"] <= later["scratch"]["sets"]
    verified = figures["verification"]
    assert verified["pairs"] > 0 and verified["pairs"] % verified["candidates"] == 0  # each image's candidates
    assert 0 <= verified["recall_by_distance"] <= 1
    for tolerance, assign in copies.VARIANTS:
        row = verified[f"{tolerance}/{assign}"]
        assert 0 <= row["recall"] <= 1 and row["us_per_pair"] > 0 and row["shuffled_max"] >= 0
    free = verified["label_free"]
    assert free["hard_negatives"] > 0
    thresholds = [free[str(rate)]["threshold"] for rate in copies.FALSE_POSITIVE_RATES]
    assert thresholds == sorted(thresholds)  # a lower rate, a threshold as high or higher
    assert all(0 <= free[str(rate)]["precision"] <= 1 for rate in copies.FALSE_POSITIVE_RATES)
    assert len(verified["grids"]) == 2 * len(copies.GRID_TOLERANCES)  # the shipped layer's grid and the finer one
    assert all(0 <= r["recall"] <= 1 and r["us_per_pair"] > 0 for r in verified["grids"].values())
    grouped = figures["verified_copies"]  # the copy groups of verified pairs, at each rate's threshold
    thresholds = [grouped[str(rate)]["threshold"] for rate in copies.VERIFIED_RATES]
    assert thresholds == sorted(thresholds) and grouped["candidates"] > 0
    assert all(
        0 <= grouped[str(r)]["precision"] <= 1 and 0 <= grouped[str(r)]["recall"] <= 1 for r in copies.VERIFIED_RATES
    )


def test_recall_at_a_pair_precision_reads_the_last_point_that_holds_it():
    from benchmarks.copies import recall_at_precision

    right = np.array([True, True, False, True, False, True])
    # taken by score: right, right, wrong (2/3), right (3/4), ...: 1.0 holds after two, 0.75 after four
    assert recall_at_precision([6, 5, 4, 3, 2, 1], right, 1.0) == 0.5
    assert recall_at_precision([6, 5, 4, 3, 2, 1], right, 0.75) == 0.75
    assert recall_at_precision([1, 2, 3, 4, 5, 6], right, 0.95) == 0.25  # a right pair first, then a wrong one
    assert recall_at_precision([1, 1], np.array([False, False])) == 0.0


def test_pairwise_precision_and_recall_count_pairs():
    from benchmarks.copies import pairwise

    labels = ["a", "a", "a", "b", "b", "c"]  # true pairs: 3 of a, 1 of b
    precision, recall, pairs = pairwise([np.array([0, 1]), np.array([2, 3, 4])], labels)
    assert (precision, recall, pairs) == (2 / 4, 2 / 4, 4)
    assert pairwise([], labels) == (1.0, 0.0, 0)


def test_completeness_benchmark_asks_a_finished_made_up_night(capsys):
    from benchmarks import completeness

    completeness.run(images=100)
    figures = last_json_line(capsys)
    assert figures["all_complete"] and figures["stages"] >= 12 and figures["tasks"] > figures["stages"]


def test_against_benchmark_times_both_commits_on_the_same_images(capsys):
    from benchmarks import against
    from pipeline.settings import Codebook

    figures = against.run("HEAD", images=64, rounds=1, sample_images=40, fitting=Codebook(size=50, sample_size=3000))
    out = capsys.readouterr().out
    assert "compute_histograms, HEAD" in out and "words the same" in out
    assert figures["words"] == 64 * 49 and len(figures["us_per_descriptor"]["against"]) == 1
    assert figures["words_same"] == figures["words"]  # two processes, the same words
