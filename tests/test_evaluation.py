import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.evaluation import evaluate, read_labels

IDS = np.array([1, 2, 3, 4, 5, 6, 7])
#: a: 1, 2, 3; b: 4, 5; c: 6 alone (a distractor, not a query); 7 unlabelled
LABELS = {"1": "a", "2": "a", "3": "a", "4": "b", "5": "b", "6": "c", "99": "a"}  # 99 is not in the collection


def test_metrics_match_hand_computed_values_on_a_mixed_ranking():
    neighbours = np.array(
        [
            [2, 3, 4, 5, 6],  # hits 1 1 0 0 0, 2 relevant: P@1 1, P@5 .4, R@5 1, AP (1/1 + 2/2) / 2 = 1
            [4, 5, 6, 7, 1],  # hits 0 0 0 0 1: P@1 0, P@5 .2, R@5 .5, AP (1/5) / 2 = .1
            [4, 1, 5, 2, 6],  # hits 0 1 0 1 0: P@1 0, P@5 .4, R@5 1, AP (1/2 + 2/4) / 2 = .5
            [5, 1, 2, 3, 6],  # 1 relevant, first: P@1 1, P@5 .2, R@5 1, AP 1
            [1, 2, 3, 6, 4],  # 1 relevant, fifth: P@1 0, P@5 .2, R@5 1, AP (1/5) / 1 = .2
            [1, 2, 3, 4, 5],  # c occurs once: not a query
            [1, 2, 3, 4, 5],  # unlabelled: not a query
        ]
    )
    result = evaluate(IDS, neighbours, LABELS)
    assert result["queries"] == 5
    assert result["precision_at_1"] == pytest.approx(0.4)
    assert result["precision_at_5"] == pytest.approx(0.28)
    assert result["recall_at_5"] == pytest.approx(0.9)
    assert result["map"] == pytest.approx(0.56)
    a, b = result["per_label"]["a"], result["per_label"]["b"]
    assert set(result["per_label"]) == {"a", "b"}
    assert (a["queries"], a["precision_at_1"], a["recall_at_5"], a["map"]) == (
        3,
        pytest.approx(1 / 3),
        pytest.approx(2.5 / 3),
        pytest.approx(1.6 / 3),
    )
    assert (b["queries"], b["precision_at_1"], b["precision_at_5"], b["map"]) == (
        2,
        0.5,
        pytest.approx(0.2),
        pytest.approx(0.6),
    )


def test_a_perfect_ranking_scores_one_and_a_ranking_without_relevant_images_zero():
    perfect = np.array(
        [
            [2, 3, 6, 7, 4],
            [1, 3, 6, 7, 4],
            [1, 2, 6, 7, 4],
            [5, 6, 7, 1, 2],
            [4, 6, 7, 1, 2],
            [1, 2, 3, 4, 5],
            [1, 2, 3, 4, 5],
        ]
    )
    best = evaluate(IDS, perfect, LABELS)
    assert (best["precision_at_1"], best["recall_at_5"], best["map"]) == (1.0, 1.0, 1.0)
    assert best["precision_at_5"] == pytest.approx((2 / 5 * 3 + 1 / 5 * 2) / 5)  # at most |R| of 5 can be relevant
    worst = np.array(
        [
            [4, 5, 6, 7, 4],
            [4, 5, 6, 7, 4],
            [4, 5, 6, 7, 4],
            [1, 2, 3, 6, 7],
            [1, 2, 3, 6, 7],
            [1, 2, 3, 4, 5],
            [1, 2, 3, 4, 5],
        ]
    )
    none = evaluate(IDS, worst, LABELS)
    assert (none["precision_at_1"], none["precision_at_5"], none["recall_at_5"], none["map"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,name\n1,a\n", "lacks the columns id,label"),
        ("id,label\n1,a\n1,b\n", "repeats the ID 1 on line 3"),
        ("id,label\n1,a\n2,\n", "empty id or label on line 3"),
    ],
)
def test_bad_labels_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_labels(tmp_path / "labels.csv")


def test_labels_are_read_as_strings(tmp_path):
    (tmp_path / "labels.csv").write_text("id, label\n 7 , plate \n8,map\n")
    assert read_labels(tmp_path / "labels.csv") == {"7": "plate", "8": "map"}


def test_a_night_is_scored_on_its_raw_lists_and_labels_that_give_no_query_name_the_setting():
    from pipeline.evaluation import score_night

    neighbours = np.array([[j for j in IDS if j != i][:5] for i in IDS])
    result = {"ids": IDS, "neighbours": neighbours.copy(), "raw_rows": np.array([0]), "raw_neighbours": neighbours[:1]}
    result["neighbours"][0] = [4, 5, 6, 7, 2]  # image 1's list under the verdicts
    scores = score_night(result, LABELS)
    assert scores["queries"] == 5 and scores["per_label"]["a"]["precision_at_1"] == 1.0  # the raw list counts
    with pytest.raises(ConfigError, match=r"^\[evaluate\] labels='l.csv' gives no query"):
        score_night(result, {"1": "x", "2": "y"}, labels_path="l.csv")
