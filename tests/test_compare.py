import numpy as np

from pipeline.blocks import ArrayBlocks
from pipeline.compare import compare_layer, sort_rows, table
from pipeline.store import FeatureIndex


def grouped_collection(n=24, groups=4, n_local=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, n_local, 8)) * 4
    descriptors = centres[np.arange(n) % groups] + rng.normal(size=(n, n_local, 8))
    ids = np.arange(100, 100 + n)
    keys = np.array([f"k{i}" for i in range(n)])
    index = FeatureIndex(ids, np.array(["1"] * n), keys, keys, keys, ids, [])
    labels = {str(i): f"group{p % groups}" for p, i in enumerate(ids)}
    return ArrayBlocks(descriptors), index, labels


def test_every_setting_of_the_grid_is_scored_once():
    blocks, index, labels = grouped_collection()
    # auto gives 24 * 10 / 8 = 30 words: the same as the 30 asked for, so made once
    rows = compare_layer(
        blocks,
        index,
        {"layer": "conv5_block3_out"},
        [8, 30, "auto"],
        ["raw", "tfidf"],
        ["euclidean", "cosine"],
        labels=labels,
    )
    assert len(rows) == 2 * 2 * 2
    assert sorted({r["codebook"] for r in rows}) == ["30 (auto)", "8"]
    assert {(r["size"], r["weighting"], r["metric"]) for r in rows} == {
        (s, w, m) for s in (8, 30) for w in ("raw", "tfidf") for m in ("euclidean", "cosine")
    }
    assert all(r["queries"] == 24 for r in rows)
    # groups this far apart: some setting puts every image's group first
    assert max(r["map"] for r in rows) == 1.0 and min(r["precision_at_1"] for r in rows) > 0.5


def test_rows_are_sorted_best_first_and_printed_as_a_table():
    rows = [
        {"layer": "a", "codebook": "8", "weighting": "raw", "metric": "cosine", "map": 0.5, "precision_at_1": 0.9},
        {"layer": "b", "codebook": "8", "weighting": "raw", "metric": "cosine", "map": 0.7, "precision_at_1": 0.1},
        {"layer": "c", "codebook": "8", "weighting": "raw", "metric": "cosine", "map": 0.5, "precision_at_1": 0.95},
    ]
    ordered = sort_rows(rows)
    assert [r["layer"] for r in ordered] == ["b", "c", "a"]
    lines = table(ordered).splitlines()
    assert lines[0] == "| layer | K | weighting | metric | mAP | P@1 |"
    assert lines[2] == "| b | 8 | raw | cosine | 0.700 | 0.100 |" and len(lines) == 5


def test_without_labels_the_self_check_orders_the_rows():
    rows = [
        {"layer": "a", "selfcheck_top1": 0.5, "selfcheck_top5": 0.9},
        {"layer": "b", "selfcheck_top1": 0.6, "selfcheck_top5": 0.7},
    ]
    assert [r["layer"] for r in sort_rows(rows)] == ["b", "a"]
    assert "mAP" not in table(rows) and "self-check top-1" in table(rows)


def test_normalisations_assignments_and_powers_are_each_scored():
    blocks, index, labels = grouped_collection()
    rows = compare_layer(
        blocks,
        index,
        {"layer": "conv5_block3_out"},
        [8],
        ["tfidf"],
        ["cosine"],
        labels=labels,
        descriptors=["raw", "l2"],
        reduced=["raw", "l2"],
        assigns=[1, 2],
        powers=[1.0, 0.5],
    )
    settings = {(r["descriptors"], r["reduced"], r["assign"], r["power"]) for r in rows}
    assert len(rows) == len(settings) == 2 * 2 * 2 * 2
    assert all(r["queries"] == 24 and 0 < r["map"] <= 1 for r in rows)


def test_settings_are_scored_on_the_verdicts_without_labels():
    from pipeline.verdicts import Verdicts

    blocks, index, labels = grouped_collection()
    ids = index.ids
    # curators judged pairs of one group right, pairs of two groups wrong
    same = [(ids[i], ids[i + 4]) for i in range(8)]
    other = [(ids[i], ids[i + 1]) for i in range(8)]
    found = Verdicts(
        image_id=np.array([a for a, _ in same + other]),
        similar_image_id=np.array([b for _, b in same + other]),
        right=np.array([True] * 8 + [False] * 8),
        time=np.array(["2026-12-01T00:00:00+00:00"] * 16),
        author=np.array([""] * 16),
    )
    rows = compare_layer(blocks, index, {"layer": "conv5_block3_out"}, [4, 30], ["tfidf"], ["cosine"], verdicts=found)
    assert len(rows) == 2 and all(r["verdict_pairs"] == 16 and "map" not in r for r in rows)
    # groups this far apart: the lists find every pair judged right and hold none judged wrong
    best = sort_rows(rows)[0]
    assert best["verdict_right_found"] == 1.0 and best["verdict_judged_right"] == 1.0
    assert "verdicts: right found" in table(rows) and "mAP" not in table(rows)


def test_without_labels_the_verdicts_order_the_rows_before_the_self_check():
    rows = [
        {"layer": "a", "verdict_right_found": 0.4, "verdict_judged_right": 0.9, "selfcheck_top1": 0.9},
        {"layer": "b", "verdict_right_found": 0.6, "verdict_judged_right": 0.2, "selfcheck_top1": 0.1},
        {"layer": "c", "verdict_right_found": 0.6, "verdict_judged_right": 0.5, "selfcheck_top1": 0.1},
    ]
    assert [r["layer"] for r in sort_rows(rows)] == ["c", "b", "a"]
