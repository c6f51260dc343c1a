"""The served run (lookups by ID, PPN and file name, lists as stored), the review queue's kinds and
order, and the map's layout."""

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.synthetic import served_run
from pipeline.atlas import MapLayout
from pipeline.browse import ServedRun
from pipeline.copies import Numbered, save_copies
from pipeline.output import read_similarities, write_similarities
from pipeline.review import KINDS, review_queue
from pipeline.verdicts import Verdicts


@pytest.fixture()
def run(tmp_path):
    served_run(tmp_path, 50, per_record=5, group_share=0.2)
    return ServedRun.load(tmp_path)


def test_lists_are_those_of_similarities_hdf5(run, tmp_path):
    stored = read_similarities(tmp_path / "similarities.hdf5")
    for row in range(len(run)):
        listing = run.listing(row)
        assert listing["id"] == stored["ids"][row] and listing["filename"] == stored["filename"][row]
        assert [n["id"] for n in listing["neighbours"]] == stored["neighbours"][row].tolist()
        assert np.array_equal(np.float32([n["distance"] for n in listing["neighbours"]]), stored["distances"][row])


@pytest.mark.parametrize(
    "text, row",
    [
        ("1000001", 0),
        (" 1000050 ", 49),
        ("1000051", None),
        ("01000001", None),
        ("1000001.0", None),
        ("-1", None),
        ("", None),
        ("../1000001", None),
        ("9" * 40, None),
    ],
)
def test_an_integer_id_is_found_only_as_written(run, text, row):
    assert run.row_of(text) == row


def test_string_ids_are_found_exactly(tmp_path):
    ids = np.array(["b-2", "a-1", "ä-3"], dtype=object)
    write_similarities(
        tmp_path / "similarities.hdf5",
        ids,
        np.array(["1", "1", "2"]),
        np.array(["x.jpg", "y.jpg", "z.jpg"]),
        np.array([[1], [2], [0]]),
        np.array([[0.1], [0.2], [0.3]]),
        {"run_date": "2026-12-01"},
    )
    run = ServedRun.load(tmp_path)
    assert [run.row_of(t) for t in ("a-1", "b-2", "ä-3", "a", "A-1")] == [1, 0, 2, None, None]
    assert run.listing(2) == {
        "id": "ä-3",
        "ppn": "2",
        "filename": "z.jpg",
        "neighbours": [
            {"id": "b-2", "ppn": "1", "filename": "x.jpg", "distance": pytest.approx(0.3), "similarity": 70.0}
        ],
    }


def test_search_by_id_ppn_path_and_file_name_prefix(run):
    assert run.search("1000007").how == "id"
    found = run.search("PPN600000001")
    assert found.how == "ppn" and found.rows.tolist() == [5, 6, 7, 8, 9]
    assert run.search("600000001").rows.tolist() == [5, 6, 7, 8, 9]
    assert run.search("PPN600000002/00000003.jpg").rows.tolist() == [12]
    by_prefix = run.search("00000004")
    assert by_prefix.how == "filename" and by_prefix.total == 10 and by_prefix.rows.tolist() == list(range(3, 50, 5))
    assert run.search("0000000", limit=4).total == 50 and len(run.search("0000000", limit=4).rows) == 4
    assert run.search("zzz").how == "none"


def test_copy_groups_and_records(run):
    grouped = np.flatnonzero(run.group >= 0)
    assert len(grouped) == 10
    for row in grouped:
        members = run.group_rows(row)
        assert row in members and len(members) == 2 and (run.group[members] == run.group[row]).all()
    assert len(run.group_rows(int(np.flatnonzero(run.group < 0)[0]))) == 0
    assert run.record_rows("PPN600000009").tolist() == [45, 46, 47, 48, 49]


def test_the_review_queue_orders_its_kinds_and_leaves_out_the_pairs_judged(tmp_path):
    n = 8
    ids = np.arange(1, n + 1)
    ppn = np.array(["1", "1", "2", "2", "3", "3", "4", "4"])
    # rows 0 and 2: copies in two records; 1 and 3 just past the threshold; 4's first neighbour 6
    # lists 7 first (one-sided, but judged); 5's first neighbour 4 lists 6 first (one-sided)
    neighbours = np.array([[2, 1], [3, 0], [0, 1], [1, 0], [6, 7], [4, 6], [7, 5], [6, 5]])
    distances = np.array(
        [[0.01, 0.5], [0.06, 0.5], [0.01, 0.5], [0.06, 0.6], [0.2, 0.4], [0.4, 0.5], [0.1, 0.5], [0.1, 0.5]]
    )
    attrs = {"run_date": "2026-12-01", "digest": "x"}
    verdicts = Verdicts(np.array([5]), np.array([7]), np.array([True]), np.array(["t"]), np.array([""]))
    write_similarities(tmp_path / "similarities.hdf5", ids, ppn, ppn, neighbours, distances, attrs, verdicts=verdicts)
    import pandas as pd

    frame = pd.DataFrame(
        {"group": [1, 1], "image_id": [1, 3], "ppn": ["1", "2"], "filename": ["1", "2"], "first_seen": "d", "set": ""}
    )
    save_copies(tmp_path / "copies.h5", Numbered(frame, 2, []), {"threshold": 0.05})
    run = ServedRun.load(tmp_path)
    a, b, kinds = review_queue(run)
    pairs = [(KINDS[k], tuple(sorted((run.id_of(x), run.id_of(y))))) for x, y, k in zip(a, b, kinds)]
    assert pairs[0] == ("copies across records", (1, 3))
    kinds_seen = [k for k, _ in pairs]
    assert kinds_seen == sorted(kinds_seen, key=KINDS.index)  # in the order of the kinds
    assert ("just past the copy threshold", (2, 4)) in pairs
    assert ("one-sided first neighbour", (5, 6)) in pairs
    assert all(pair != (5, 7) for _, pair in pairs)  # judged already
    assert len(set(p for _, p in pairs)) == len(pairs)  # each pair once


def test_the_map_places_like_images_together_and_an_image_by_itself(tmp_path):
    rng = np.random.default_rng(0)
    themes = rng.integers(0, 5, size=(6, 300)) * (rng.random((6, 300)) < 0.1)
    counts = np.repeat(themes, 40, axis=0) + (rng.random((240, 300)) < 0.02)
    vectors = sp.csr_matrix(counts.astype(np.int64))
    ids = np.arange(240)
    layout = MapLayout(landmarks=120, random_state=3).fit(vectors)
    xy = layout.transform(vectors, ids)
    assert xy.shape == (240, 2) and (xy >= 0).all() and (xy <= 1).all()
    theme = np.repeat(np.arange(6), 40)
    centres = np.array([xy[theme == t].mean(axis=0) for t in range(6)])
    spread = np.mean([np.linalg.norm(xy[theme == t] - centres[t], axis=1).mean() for t in range(6)])
    apart = np.mean([np.linalg.norm(centres[s] - centres[t]) for s in range(6) for t in range(s)])
    assert spread < apart / 4
    np.testing.assert_array_equal(layout.transform(vectors[7:8], ids[7:8]), xy[7:8])  # by itself, the same place
    layout.save(tmp_path / "layout.h5", {"run_date": "d"})
    np.testing.assert_array_equal(MapLayout.load(tmp_path / "layout.h5").transform(vectors, ids), xy)
    np.testing.assert_array_equal(MapLayout(landmarks=120, random_state=3).fit(vectors).transform(vectors, ids), xy)
