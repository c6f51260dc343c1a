"""Copy groups: found on synthetic copies, never chained, split by verdicts, numbered stably."""

import numpy as np
import pandas as pd
import pytest

from pipeline.copies import (
    Numbered,
    by_distance,
    copy_groups,
    known_sets,
    number_groups,
    read_copies,
    selfcheck_threshold,
    spanning,
    write_csv,
)
from pipeline.errors import ConfigError
from pipeline.histograms import word_histograms
from pipeline.neighbours import nearest_neighbours
from pipeline.weighting import WeightedHistograms

WORDS, N_LOCAL = 60, 20


def collection(seed, groups=(3, 4, 2, 5), distractors=40):
    """Histograms of groups of copies (each a base with one descriptor moved) among distractors:
    (draws, labels: group number or -1)."""
    rng = np.random.default_rng(seed)
    draws, labels = [], []
    for g, size in enumerate(groups):
        base = rng.integers(0, WORDS, size=N_LOCAL)
        for _ in range(size):
            copy = base.copy()
            copy[rng.integers(0, N_LOCAL)] = rng.integers(0, WORDS)
            draws.append(copy)
            labels.append(g)
    draws += list(rng.integers(0, WORDS, size=(distractors, N_LOCAL)))
    labels += [-1] * distractors
    order = rng.permutation(len(draws))
    return np.array(draws)[order], np.array(labels)[order]


def searched(draws, k=5):
    data = WeightedHistograms(
        word_histograms(draws, WORDS), N_LOCAL, np.arange(len(draws)), "raw", "euclidean", power=1.0
    )
    neighbours, distances = nearest_neighbours(data, k)
    return data, neighbours, distances


#: Two copies of a base, each with one descriptor moved, are at most sqrt(8) / N_LOCAL apart.
THRESHOLD = np.sqrt(8) / N_LOCAL + 1e-9


def brute_distance(data, a, b):
    x, y = data.vectors[a].toarray().ravel(), data.vectors[b].toarray().ravel()
    return np.sqrt(float(((x - y) ** 2).sum())) / data.unit


def grouped(data, neighbours, distances, threshold, **kwargs):
    g = copy_groups(neighbours, distances, threshold, by_distance(data.subset), **kwargs)
    return g.groups, g.crowded, g.left_out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_of_copies_are_found_and_nothing_else(seed):
    draws, labels = collection(seed)
    data, neighbours, distances = searched(draws)
    groups, crowded, left_out = grouped(data, neighbours, distances, THRESHOLD)
    assert left_out == 0 and crowded == 0
    found = sorted(tuple(sorted(labels[g].tolist())) for g in groups)
    expected = sorted(tuple([g] * size) for g, size in enumerate((3, 4, 2, 5)))
    assert found == expected  # each group whole, alone, and no distractor in any
    for g in groups:  # the diameter bound, pair by pair
        assert max(brute_distance(data, a, b) for a in g for b in g) <= THRESHOLD


def test_a_chain_of_close_pairs_is_cut_so_that_no_group_is_wider_than_the_threshold():
    # images each one descriptor from the next: neighbours in a line, the ends far apart
    rng = np.random.default_rng(5)
    line = [rng.integers(0, WORDS, size=N_LOCAL)]
    for i in range(7):
        step = line[-1].copy()
        step[i] = (step[i] + 1 + rng.integers(0, WORDS - 1)) % WORDS
        line.append(step)
    draws = np.vstack([line, rng.integers(0, WORDS, size=(30, N_LOCAL))])
    data, neighbours, distances = searched(draws, k=3)
    threshold = np.sqrt(2) / N_LOCAL + 1e-9  # next to each other only
    linked = [(a, b) for a in range(8) for b in neighbours[a] if b < 8 and a in neighbours[b]]
    linked = [(a, b) for a, b in linked if brute_distance(data, a, b) <= threshold]
    assert len(linked) >= 6  # the chain is there to be followed
    groups, _, _ = grouped(data, neighbours, distances, threshold)
    assert groups and all(len(g) == 2 for g in groups)
    for g in groups:
        assert brute_distance(data, *g) <= threshold


def test_a_pair_judged_wrong_is_never_in_one_group():
    draws, labels = collection(3)
    data, neighbours, distances = searched(draws)
    members = np.flatnonzero(labels == 3)  # the group of five
    groups, _, _ = grouped(data, neighbours, distances, THRESHOLD, wrong=[(members[0], members[1])])
    assert not any(members[0] in g and members[1] in g for g in groups)
    assert sum(len(g) for g in groups if set(g) <= set(members)) >= 4  # the rest stays grouped


def test_blank_pages_and_too_large_sets_are_left_out_and_counted():
    draws, _ = collection(4, groups=(5, 2))
    draws = np.vstack([draws, np.zeros((12, N_LOCAL), dtype=draws.dtype)])  # a blank page, a dozen times
    data, neighbours, distances = searched(draws)
    groups, crowded, left_out = grouped(data, neighbours, distances, THRESHOLD)
    assert crowded == 12 and sorted(len(g) for g in groups) == [2, 5]  # each blank's whole list is blank
    groups, crowded, left_out = grouped(data, neighbours, distances, THRESHOLD, max_component=4)
    assert left_out == 1 and [len(g) for g in groups] == [2]


def test_a_later_night_works_out_only_the_sets_whose_images_or_verdicts_changed():
    draws, labels = collection(6)
    data, neighbours, distances = searched(draws)
    ids, keys = np.arange(1000, 1000 + len(draws)), np.array([f"k{i}" for i in range(len(draws))])
    asked = []

    def read(rows):
        asked.append(rows)
        return data.subset(rows)

    histograms = by_distance(read)

    first = copy_groups(neighbours, distances, THRESHOLD, histograms, ids=ids, keys=keys, basis="b")
    assert first.regrouped == first.sets == 4 and len(first.groups) == 4
    rows = number_groups(first.groups, ids, ids, ids, "2026-01-01", sets=first.keys).rows
    known = known_sets(Numbered(rows, 5, []), first.settled)
    asked.clear()
    again = copy_groups(neighbours, distances, THRESHOLD, histograms, ids=ids, keys=keys, basis="b", known=known)
    assert again.regrouped == 0 and not asked  # nothing read, nothing worked out
    assert [g.tolist() for g in again.groups] == [g.tolist() for g in first.groups] and again.keys == first.keys
    # one image's histogram changed (its key), and a verdict in another set: those two sets only
    changed = keys.copy()
    one, other = first.groups[0], first.groups[1]
    changed[one[0]] = "k-new"
    later = copy_groups(
        neighbours,
        distances,
        THRESHOLD,
        histograms,
        wrong=[(other[0], other[1])],
        ids=ids,
        keys=changed,
        basis="b",
        known=known,
    )
    assert later.regrouped == 2 and sorted(asked[0].tolist()) == sorted([*one.tolist(), *other.tolist()])
    assert not any(other[0] in g and other[1] in g for g in later.groups)
    asked.clear()  # another basis (a refit, another threshold): every set again
    assert (
        copy_groups(neighbours, distances, THRESHOLD, histograms, ids=ids, keys=keys, basis="c", known=known).regrouped
        == 4
    )


def night(groups, date, previous=None, next_group=1):
    ids = np.arange(100, 140)
    ppn = np.array([f"{i % 7}" for i in ids])
    return number_groups([np.array(g) for g in groups], ids, ppn, ppn, date, previous, next_group)


def test_group_numbers_hold_night_after_night_and_are_never_reused():
    first = night([[0, 1, 2], [5, 6], [10, 11, 12, 13]], "2026-01-01")
    assert sorted(first.rows["group"].unique()) == [1, 2, 3] and first.new_groups == [1, 2, 3]
    # the same groups, one image added: the same numbers, the new image seen tonight
    second = night([[0, 1, 2, 3], [5, 6], [10, 11, 12, 13]], "2026-01-02", first.rows, first.next_group)
    by_image = second.rows.set_index("image_id")
    assert by_image.loc[100, "group"] == 1 and by_image.loc[100, "first_seen"] == "2026-01-01"
    assert by_image.loc[103, "group"] == 1 and by_image.loc[103, "first_seen"] == "2026-01-02"
    assert second.new_groups == [] and second.next_group == 4
    # group 3 splits (its larger part keeps the number), group 2 vanishes, a new group appears
    third = night([[0, 1, 2, 3], [10, 11, 12], [13, 20], [30, 31]], "2026-01-03", second.rows, second.next_group)
    by_image = third.rows.set_index("image_id")
    assert by_image.loc[110, "group"] == 3 and by_image.loc[110, "first_seen"] == "2026-01-01"
    assert sorted(third.new_groups) == [4, 5] and 2 not in set(third.rows["group"])
    assert by_image.loc[113, "first_seen"] == "2026-01-03"  # in another group now
    # a vanished number is not given again
    fourth = night([[5, 6]], "2026-01-04", third.rows, third.next_group)
    assert fourth.rows["group"].tolist() == [6, 6]


def test_copies_csv_is_read_back_and_groups_across_records_are_told(tmp_path):
    first = night([[0, 1], [7, 14]], "2026-01-01")  # 100 and 101 in records 2 and 3; 107 and 114 both in 2
    path = tmp_path / "copies.csv"
    write_csv(path, first.rows)
    rows = read_copies(path)
    assert list(rows["group"]) == [1, 1, 2, 2] and list(spanning(rows)) == [1]
    (tmp_path / "bad.csv").write_text("group,id\n1,2\n")
    assert read_copies(tmp_path / "bad.csv") is None and read_copies(tmp_path / "none.csv") is None
    again = night([[0, 1], [7, 14]], "2026-01-02", rows, 3)
    pd.testing.assert_frame_equal(again.rows.astype(str), first.rows.astype(str))


def test_the_threshold_is_a_measured_distance_and_needs_some():
    assert selfcheck_threshold([0.3, 0.1, 0.2, 0.4], 0.5) == 0.2
    with pytest.raises(ConfigError, match=r"\[copies\] threshold = auto needs"):
        selfcheck_threshold([])


def views(seed, groups=(3, 6, 2, 12), distractors=40, vocabulary=200):
    """Words on 4 x 4 grids: views of pictures (windows of a 6 x 6 grid of words at several places,
    a cell changed) among distractors: (words, labels: picture number or -1)."""
    rng = np.random.default_rng(seed)
    words, labels = [], []
    for g, size in enumerate(groups):
        picture = rng.integers(0, vocabulary, size=(6, 6))
        for _ in range(size):
            y, x = rng.integers(0, 3, size=2)
            view = picture[y : y + 4, x : x + 4].ravel().copy()
            view[rng.integers(0, 16)] = rng.integers(0, vocabulary)
            words.append(view)
            labels.append(g)
    words += list(rng.integers(0, vocabulary, size=(distractors, 16)))
    labels += [-1] * distractors
    order = rng.permutation(len(words))
    return np.array(words)[order], np.array(labels)[order]


@pytest.mark.parametrize("seed", [0, 1])
def test_verified_pairs_group_the_views_of_a_picture_without_chaining(seed):
    from pipeline.copies import as_distance, by_verification
    from pipeline.verify import Verifier

    words, labels = views(seed)
    verifier = Verifier(words, np.ones(200))
    data = WeightedHistograms(word_histograms(words, 200), 16, np.arange(len(words)), "tfidf", "cosine", power=0.5)
    short, _ = nearest_neighbours(data, 20)
    scores = verifier.scores(np.arange(len(words)), short)[0]
    threshold = 5.0  # five cells explained: no two distractors get there
    g = copy_groups(short, as_distance(scores), 1 / threshold, by_verification(verifier), mutual=False)
    assert g.left_out == 0 and g.crowded == 0
    for group in g.groups:  # no distractor, one picture, and every pair verified (no chain)
        assert (labels[group] >= 0).all() and len(set(labels[group])) == 1
        pair = verifier.scores(group, np.broadcast_to(group, (len(group), len(group))))[0]
        assert np.minimum(pair, pair.T)[~np.eye(len(group), dtype=bool)].min() >= threshold
    found = {int(labels[group[0]]) for group in g.groups}
    assert found == {0, 1, 2, 3}  # every picture found
    biggest = max(g.groups, key=len)
    assert len(biggest) >= 4
    # a verdict of wrong between two of a group's views parts them
    a, b = int(biggest[0]), int(biggest[1])
    parted = copy_groups(short, as_distance(scores), 1 / threshold, by_verification(verifier), [(a, b)], mutual=False)
    assert not any(a in group and b in group for group in parted.groups)
