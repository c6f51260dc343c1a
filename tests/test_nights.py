"""Night after night: copy groups and incremental lists against runs from scratch, and the run's date."""

import datetime
import logging
import os
import shutil
import sqlite3

import luigi
import numpy as np
import pandas as pd
import pytest

from pipeline.cms import plan as cms_plan
from pipeline.copies import read_copies
from pipeline.h5io import read_attrs
from pipeline.output import read_similarities
from tasks import (
    Copies,
    LoadCopies,
    LoadSimilarities,
    Nightly,
    Similarities,
)

from .conftest import luigi_config, pipeline_config
from .runs import change_collection, cms_rows


def test_copy_groups_keep_their_numbers_night_after_night(monkeypatch, small_collection, tmp_path):
    content = tmp_path / "content"
    shutil.copytree(small_collection[0], content)
    rng = np.random.default_rng(1)
    nights = {}
    cms_copies = {"cms__url": f"sqlite:///{tmp_path / 'cms.sqlite'}", "cms__copies_table": "copies"}
    for day, date in enumerate(["2026-03-01", "2026-03-02", "2026-03-03"]):
        if day == 2:
            change_collection(content, rng, date)
        if day == 0:  # a threshold that groups some of the small collection: its 40th percentile distance
            with luigi_config(monkeypatch, pipeline_config(tmp_path)):
                assert luigi.build([Similarities(date=datetime.date.fromisoformat(date))], local_scheduler=True)
            distances = read_similarities(tmp_path / "artifacts" / "similarities.hdf5")["distances"]
            threshold = float(np.quantile(distances, 0.4))
        with luigi_config(monkeypatch, pipeline_config(tmp_path, copies__threshold=threshold, **cms_copies)):
            assert luigi.build([LoadCopies(date=datetime.date.fromisoformat(date))], local_scheduler=True, workers=1)
        rows = read_copies(tmp_path / "artifacts" / "copies.csv")
        nights[date] = {"threshold": threshold, "rows": rows, "attrs": read_attrs(tmp_path / "artifacts" / "copies.h5")}
        with sqlite3.connect(tmp_path / "cms.sqlite") as db:  # the CMS's table holds tonight's groups
            loaded = db.execute("SELECT copy_group, image_id, first_seen, run_id FROM copies").fetchall()
        assert sorted(loaded) == sorted(
            (int(g), int(i), d, nights[date]["attrs"]["digest"])
            for g, i, d in rows[["group", "image_id", "first_seen"]].values
        )
    first, second, third = (nights[d]["rows"] for d in sorted(nights))
    assert first["group"].nunique() >= 2
    assert nights["2026-03-01"]["attrs"]["threshold_source"] == "[copies] threshold"
    pd.testing.assert_frame_equal(second, first)  # nothing changed: the same groups, numbers and dates
    assert nights["2026-03-02"]["attrs"]["new"] == 0
    assert nights["2026-03-02"]["attrs"]["regrouped"] == 0 < nights["2026-03-02"]["attrs"]["sets"]  # all known
    # the third night's groups, worked out only where the collection changed, are those of a night from scratch
    os.remove(tmp_path / "artifacts" / "copies.h5")
    os.remove(tmp_path / "artifacts" / "runs" / "2026-03-03" / "previous" / "copies.h5")  # the night's input
    with luigi_config(monkeypatch, pipeline_config(tmp_path, copies__threshold=threshold)):
        assert luigi.build([Copies(date=datetime.date(2026, 3, 3))], local_scheduler=True, workers=1)
    scratch = read_copies(tmp_path / "artifacts" / "copies.csv")
    assert read_attrs(tmp_path / "artifacts" / "copies.h5")["regrouped"] == nights["2026-03-03"]["attrs"]["sets"]
    assert {frozenset(r["image_id"]) for _, r in scratch.groupby("group")} == {
        frozenset(r["image_id"]) for _, r in third.groupby("group")
    }
    assert nights["2026-03-03"]["attrs"]["regrouped"] < nights["2026-03-03"]["attrs"]["sets"]
    members = {g: frozenset(r["image_id"]) for g, r in first.groupby("group")}
    for g, r in third.groupby("group"):
        if frozenset(r["image_id"]) in members.values():  # a group that persisted keeps its number and dates
            assert members[g] == frozenset(r["image_id"]) and set(r["first_seen"]) == {"2026-03-01"}
        elif g not in members:  # a new group takes a number never given before
            assert g > max(members) and "2026-03-03" in set(r["first_seen"])


#: Re-ranked lists: a short list of 8 (the collection has about 20 images) and the self-check that
#: sets the verification's threshold, on three images.
RERANKED = {"neighbours__rerank": "on", "neighbours__candidates": 8, "selfcheck__sample": 3}


@pytest.mark.parametrize("rerank", ["off", "on"])
def test_incremental_neighbours_and_loads_equal_a_full_run_date_after_date(
    monkeypatch, caplog, small_collection, tmp_path, rerank
):
    content = tmp_path / "content"
    shutil.copytree(small_collection[0], content)
    database = tmp_path / "cms.sqlite"
    reranked = RERANKED if rerank == "on" else {}
    config = pipeline_config(tmp_path, cms__url=f"sqlite:///{database}", **reranked)
    rng = np.random.default_rng(1)  # changes that leave some lists as they were (on the stand-in model)
    artifacts = tmp_path / "artifacts"
    monkeypatch.setattr(cms_plan, "INCREMENTAL_SHARE", 1.0)  # in 20 images, most lists change
    caplog.set_level(logging.INFO, logger=cms_plan.__name__)
    for day, date in enumerate(["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]):
        if day:
            change_collection(content, rng, date)
        caplog.clear()
        with luigi_config(monkeypatch, config):
            assert luigi.build([LoadSimilarities(date=datetime.date.fromisoformat(date))], local_scheduler=True)
        attrs = read_attrs(artifacts / "similarities.hdf5")
        assert attrs["search"] == ("full" if day == 0 else "incremental")
        # the table holds this run's lists, whether loaded whole or only where they changed
        result = read_similarities(artifacts / "similarities.hdf5")
        assert [row[:4] for row in cms_rows(database)] == sorted(
            (int(i), r + 1, int(result["neighbours"][p, r]), float(result["distances"][p, r]))
            for p, i in enumerate(result["ids"])
            for r in range(5)
        )
        assert ("every row is loaded" in caplog.text) == (day == 0), caplog.text[-2000:]
        # the same date again from scratch, without the earlier lists: every image searched
        full = tmp_path / f"full-{day}"
        ignored = shutil.ignore_patterns("similarities.hdf5", "neighbours-*", "run.lock*")
        shutil.copytree(artifacts, full / "artifacts", ignore=ignored)
        with luigi_config(
            monkeypatch, pipeline_config(full, paths__content=content, ids__csv=content / "image_ids.csv", **reranked)
        ):
            assert luigi.build([Similarities(date=datetime.date.fromisoformat(date))], local_scheduler=True, workers=1)
        assert read_attrs(full / "artifacts" / "similarities.hdf5")["search"] == "full"
        a, b = (
            read_similarities(artifacts / "similarities.hdf5"),
            read_similarities(full / "artifacts" / "similarities.hdf5"),
        )
        for key in ("ids", "neighbours", "distances", "similarities"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{date} {key}")
        if day:
            assert 0 < attrs["queried"] < len(a["ids"])
        if rerank == "on":  # the short lists kept, and only the pairs not verified before verified tonight
            assert "candidates" in a and a["candidates"].shape == (len(a["ids"]), 8)
            np.testing.assert_array_equal(a["candidate_scores"], b["candidate_scores"])
            verified = read_attrs(artifacts / "similarities.hdf5")["pairs_verified_tonight"]
            assert (verified < 8 * len(a["ids"])) == (day > 0)


def test_the_run_date_is_told_when_the_run_starts_not_at_import(monkeypatch, tmp_path):
    import tasks.base

    now = {"day": datetime.date(2026, 3, 1)}
    monkeypatch.setattr(tasks.base, "today", lambda: now["day"])
    with luigi_config(monkeypatch, pipeline_config(tmp_path)):
        before = Nightly()
        now["day"] = datetime.date(2026, 3, 2)  # one process, past midnight: the next run has the next date
        after = Nightly()
        assert (before.date, after.date) == (datetime.date(2026, 3, 1), datetime.date(2026, 3, 2))
        assert Nightly(date=datetime.date(2026, 1, 5)).date == datetime.date(2026, 1, 5)


def test_re_ranked_nights_group_verified_pairs_and_keep_their_numbers(monkeypatch, small_collection, tmp_path):
    from pipeline.codebook import Codebook as CodebookModel
    from pipeline.histograms import load_words
    from pipeline.verify import Verifier

    content = tmp_path / "content"
    shutil.copytree(small_collection[0], content)
    artifacts = tmp_path / "artifacts"
    nights = []
    for date in ["2026-03-01", "2026-03-02"]:  # the collection unchanged: the same groups, numbers and dates
        # a threshold of the site's, a score that some of the small collection's pairs reach
        with luigi_config(monkeypatch, pipeline_config(tmp_path, copies__threshold=20.0, **RERANKED)):
            assert luigi.build([Copies(date=datetime.date.fromisoformat(date))], local_scheduler=True, workers=1)
        nights.append((read_copies(artifacts / "copies.csv"), read_attrs(artifacts / "copies.h5")))
    (first, attrs), (second, _) = nights
    pd.testing.assert_frame_equal(second, first)
    assert attrs["measure"] == "verification" and attrs["groups"] > 0
    result = read_similarities(artifacts / "similarities.hdf5")
    verifier = Verifier.of_codebook(
        load_words(artifacts / "histograms.h5"), CodebookModel.load(artifacts / "codebook.h5"), 1
    )
    at = pd.Index(result["ids"])
    for _, group in first.groupby("group"):  # every pair of a group verified, either way round
        members = at.get_indexer(group["image_id"].astype(result["ids"].dtype))
        scores = verifier.scores(members, np.broadcast_to(members, (len(members), len(members))))[0]
        assert np.minimum(scores, scores.T)[~np.eye(len(members), dtype=bool)].min() >= 20.0
