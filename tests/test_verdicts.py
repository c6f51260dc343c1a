"""The verdicts: the table on the three databases, the CSV file, the checks of each row, the scores."""

import datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline import verdicts
from pipeline.errors import CmsError, ConfigError
from pipeline.verdicts import Verdicts, check_verdicts, verdict_scores

IDS = np.array([10, 20, 30, 40, 50, 60, 70, 80], dtype=np.int64)


def rows(*values, where="line"):
    """Verdict rows as read: (image_id, similar_image_id, verdict, verdict_time[, author])."""
    frame = pd.DataFrame(
        [(*v, None) if len(v) == 4 else v for v in values], columns=list(verdicts.COLUMNS), dtype=object
    )
    frame["where"] = [f"{where} {i + 2}" for i in range(len(values))]
    return frame


def test_the_latest_verdict_on_a_pair_holds_in_both_directions():
    found, bad, superseded = check_verdicts(
        rows(
            (10, 20, "wrong", "2026-11-01T10:00:00Z"),
            (20, 10, "right", "2026-11-02T10:00:00Z"),  # the same pair, later: it replaces the first
            (30, 40, "Right ", "2026-11-01 09:00:00", "a curator"),  # case and spaces do not matter
            (50, 60, "right", "2026-11-03T00:00:00+01:00"),
            (60, 50, "wrong", "2026-11-02T23:00:00Z"),  # the same instant: wrong wins the tie
        ),
        IDS,
    )
    assert bad == [] and superseded == 2
    pairs = {
        (int(a), int(b)): (bool(r), t)
        for a, b, r, t in zip(found.image_id, found.similar_image_id, found.right, found.time)
    }
    assert pairs == {
        (10, 20): (True, "2026-11-02T10:00:00+00:00"),
        (30, 40): (True, "2026-11-01T09:00:00+00:00"),  # a time without a zone is UTC
        (50, 60): (False, "2026-11-02T23:00:00+00:00"),
    }
    assert found.author[found.image_id == 30][0] == "a curator"
    assert found.image_id.dtype == IDS.dtype


def test_bad_rows_are_listed_with_their_reason_and_never_stop_the_others():
    found, bad, _ = check_verdicts(
        rows(
            (10, 999, "wrong", "2026-11-01T10:00:00Z"),
            (10, 10, "wrong", "2026-11-01T10:00:00Z"),
            (10, 20, "maybe", "2026-11-01T10:00:00Z"),
            (10, 30, "wrong", "yesterday"),
            (10, 90, "right", "2026-11-01T10:00:00Z"),
            ("", 40, "right", "2026-11-01T10:00:00Z"),
            (40, 50, "wrong", "2026-11-01T10:00:00Z"),
        ),
        IDS,
        known={"90"},
    )
    assert len(found) == 1 and (found.image_id[0], found.similar_image_id[0]) == (40, 50)
    reasons = [b.reason for b in bad]
    assert reasons == [
        "unknown ID 999: not an image of the collection",
        "a self-pair: image 10 with itself",
        "unknown verdict 'maybe': it must be wrong or right",
        "verdict_time 'yesterday' is not a date and time",
        "image 90 has gone from the collection",
        "unknown ID (empty): not an image of the collection",
    ]
    assert bad[0].row == "line 2: 10,999,wrong,2026-11-01T10:00:00Z"
    assert verdicts.bad_reasons(bad) == {
        "unknown ID": 2,
        "self-pair": 1,
        "unknown verdict": 1,
        "bad verdict_time": 1,
        "image has gone": 1,
    }


def test_ids_from_a_float_column_are_whole_numbers():
    found, bad, _ = check_verdicts(rows((10.0, 20.0, "wrong", "2026-11-01T00:00:00Z")), IDS)
    assert bad == [] and (found.image_id[0], found.similar_image_id[0]) == (10, 20)


def test_string_ids_match_as_text():
    ids = np.array(["a1", "b2", "c3", "d4", "e5", "f6", "g7"])
    found, bad, _ = check_verdicts(rows(("b2", "a1", "wrong", "2026-11-01T00:00:00Z")), ids)
    assert bad == [] and (found.image_id[0], found.similar_image_id[0]) == ("a1", "b2")


def test_an_image_keeps_enough_images_not_judged_wrong_for_its_list():
    # 8 images, k = 5: at most 2 of an image's 7 others may be judged wrong
    values = [(10, other, "wrong", f"2026-11-0{i + 1}T00:00:00Z") for i, other in enumerate((20, 30, 40, 50))]
    found, bad, _ = check_verdicts(rows(*values), IDS, k=5)
    assert sorted(found.similar_image_id.tolist()) == [20, 30]  # the earliest two
    assert len(bad) == 2 and all(b.kind == "too many wrong" and "more pairs judged wrong" in b.reason for b in bad)


def test_no_rows_no_verdicts():
    found, bad, superseded = check_verdicts(verdicts.no_rows(), IDS)
    assert len(found) == 0 and bad == [] and superseded == 0


def test_verdict_scores_count_the_raw_lists_judged_entries():
    lists = np.array([[1, 2], [0, 3], [3, 0], [2, 1], [0, 1], [0, 1], [0, 1], [0, 1]])  # positions, k = 2
    found = Verdicts(
        image_id=np.array([10, 10, 10, 50]),
        similar_image_id=np.array([20, 30, 40, 60]),
        right=np.array([True, False, True, True]),
        time=np.array(
            [
                "2026-11-01T09:00:00+00:00",
                "2026-11-01T10:00:00+00:00",
                "2026-11-02T10:00:00+00:00",
                "2026-11-02T11:00:00+00:00",
            ]
        ),
        author=np.array(["", "", "", ""]),
    )
    scores = verdict_scores(IDS, lists, found)
    # right pairs (10, 20): in both lists; (10, 40): in neither; (50, 60): in neither. Wrong (10, 30): in 10's and 30's
    assert scores["right_found"] == pytest.approx(2 / 6)
    assert scores["judged_in_lists"] == 4 and scores["judged_right"] == pytest.approx(2 / 4)
    assert scores["per_day"]["2026-11-01"] == {
        "pairs": 2,
        "right": 1,
        "wrong": 1,
        "right_found": 1.0,
        "judged_in_lists": 4,
        "judged_right": 0.5,
    }
    assert scores["per_day"]["2026-11-02"]["right_found"] == 0.0
    assert scores["per_day"]["2026-11-02"]["judged_right"] is None


# -- where the verdicts are kept -----------------------------------------------------------


def test_the_table_is_created_when_missing_and_written_and_read(database):
    assert verdicts.ensure_table(database.engine, database.verdicts, sa.BigInteger)
    assert not verdicts.ensure_table(database.engine, database.verdicts, sa.BigInteger)
    when = datetime.datetime(2026, 11, 30, 18, 5, tzinfo=datetime.UTC)
    verdicts.add_to_table(database.engine, database.verdicts, 10, 20, "wrong", "a curator", time=when)
    verdicts.add_to_table(database.engine, database.verdicts, 30, 40, "right")
    with database.engine.begin() as conn:  # the CMS's own writer leaves the time and author out
        conn.execute(
            sa.text(f"INSERT INTO {database.verdicts} (image_id, similar_image_id, verdict) VALUES (50, 60, 'wrong')")
        )
    found, bad, _ = check_verdicts(verdicts.read_table(database.engine, database.verdicts), IDS)
    assert bad == []
    assert sorted(zip(found.image_id.tolist(), found.similar_image_id.tolist(), found.right.tolist())) == [
        (10, 20, False),
        (30, 40, True),
        (50, 60, False),
    ]
    assert found.time[found.image_id == 10][0] == "2026-11-30T18:05:00+00:00"
    assert found.author[found.image_id == 10][0] == "a curator"
    assert verdicts.withdraw_from_table(database.engine, database.verdicts, 20, 10) == 1  # either direction
    assert len(check_verdicts(verdicts.read_table(database.engine, database.verdicts), IDS)[0]) == 2


def test_a_table_of_the_cms_own_making_is_read(database):
    with database.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {database.verdicts} (image_id VARCHAR(20), similar_image_id VARCHAR(20), "
                "verdict VARCHAR(10), verdict_time VARCHAR(40))"
            )
        )
        conn.execute(sa.text(f"INSERT INTO {database.verdicts} VALUES ('10', '20', 'right', '2026-11-30 10:00:00')"))
    found, bad, _ = check_verdicts(verdicts.read_table(database.engine, database.verdicts), IDS)
    assert bad == [] and found.right.tolist() == [True] and found.author.tolist() == [""]


def test_a_table_without_a_required_column_is_one_line(database):
    with database.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {database.verdicts} (image_id INTEGER, similar_image_id INTEGER)"))
    with pytest.raises(CmsError, match=r"has no column 'verdict'; its columns must be"):
        verdicts.read_table(database.engine, database.verdicts)


def test_the_csv_file_is_written_read_and_withdrawn_from(tmp_path):
    path = tmp_path / "verdicts.csv"
    assert len(verdicts.read_csv(path)) == 0  # none yet
    verdicts.add_to_csv(path, 10, 20, "wrong", "a curator")
    verdicts.add_to_csv(path, 30, 40, "right")
    assert path.read_text().splitlines()[0] == "image_id,similar_image_id,verdict,verdict_time,author"
    read = verdicts.read_csv(path)
    assert read["where"].tolist() == ["line 2", "line 3"]
    found, bad, _ = check_verdicts(read, IDS)
    assert bad == [] and found.right.tolist() == [False, True]  # in the order of their time
    assert verdicts.withdraw_from_csv(path, 20, 10) == 1
    assert check_verdicts(verdicts.read_csv(path), IDS)[0].image_id.tolist() == [30]


def test_a_csv_file_without_a_required_column_is_one_line(tmp_path):
    path = tmp_path / "verdicts.csv"
    path.write_text("image_id,similar_image_id,verdict\n10,20,wrong\n")
    with pytest.raises(ConfigError, match=r"has no column 'verdict_time'"):
        verdicts.read_csv(path)
