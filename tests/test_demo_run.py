"""A night on the bundled demo collection: the self-check, the copies, and the query command."""

import csv
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from pipeline.collection import load_inventory
from pipeline.copies import read_copies, selfcheck_threshold
from pipeline.output import read_similarities

from .conftest import luigi_config, pipeline_config
from .runs import (
    DEMO,
    SELFCHECK,
    demo_run,  # noqa: F401 (fixtures)
    run_module,
)

pytestmark = pytest.mark.resnet  # the demo's night and its queries build ResNet50


def test_self_check_finds_altered_copies_far_better_than_chance_on_the_demo(demo_run):
    report = json.loads((demo_run / "artifacts" / "run_report.json").read_text())
    check = report["selfcheck"]
    assert check["images"] == SELFCHECK and check["queries"] == SELFCHECK * 6 and check["failed"] == {}
    assert check["chance_top1"] == round(1 / 51, 6) and check["chance_top5"] == round(5 / 51, 6)
    # random weights, and still: the original first for a third of the copies (chance: 2 %)
    assert check["top1"] >= 0.33 and check["top5"] >= 0.66
    assert all(rates["queries"] == SELFCHECK for rates in check["per_alteration"].values())
    saved = json.loads((demo_run / "artifacts" / "selfcheck.json").read_text())
    assert saved["top1"] == check["top1"] and saved["settings"]["sample"] == SELFCHECK
    assert 'class="selfcheck"' in (demo_run / "artifacts" / "report.html").read_text()
    assert report["evaluation"]["queries"] == 51 and report["evaluation"]["precision_at_1"] > 0.5


def test_copies_are_grouped_within_the_self_check_threshold_and_shown(demo_run):
    report = json.loads((demo_run / "artifacts" / "run_report.json").read_text())
    found = report["copies"]
    saved = json.loads((demo_run / "artifacts" / "selfcheck.json").read_text())
    assert found["threshold"] == selfcheck_threshold(saved["first_distances"])
    assert found["threshold_source"] == f"the self-check's {len(saved['first_distances'])} copies found first"
    rows = read_copies(demo_run / "artifacts" / "copies.csv")
    assert found["groups"] == rows["group"].nunique() > 0 and found["images"] == len(rows)
    assert found["new"] == found["groups"] and set(rows["first_seen"]) == {report["date"]}
    labels = dict(csv.reader(open(os.path.join(DEMO, "labels.csv"))))
    # random weights; still, the demo's copies are grouped with their own picture only
    assert all(len({labels[i] for i in group["image_id"]}) == 1 for _, group in rows.groupby("group"))
    page = (demo_run / "artifacts" / "report.html").read_text()
    assert page.count('class="query copies"') == min(found["spanning_records"], 20) > 0


def test_query_prints_the_neighbours_of_any_file(demo_run, monkeypatch, capsys, tmp_path):
    result = read_similarities(demo_run / "artifacts" / "similarities.hdf5")
    inventory = load_inventory(demo_run / "artifacts" / "inventory.h5")
    relpath = {i: f.relpath for i, f in zip(inventory.ids.tolist(), inventory.files)}
    image = os.path.join(DEMO, relpath[int(result["ids"][3])])
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    from tasks import query  # the command's own main, in this process (the model built once)

    monkeypatch.chdir(demo_run)
    with luigi_config(monkeypatch, demo_run / "luigi.cfg"):
        assert query.main(["--json", "-k", "3", image, str(notes)]) == 1  # one file could not be read
        answers = json.loads(capsys.readouterr().out)
        assert query.main([image]) == 0
    table = capsys.readouterr().out
    first = answers[0]["neighbours"][0]
    # a collection image finds itself, then (distance ties aside) the neighbours of the run
    assert (first["id"], first["distance"], first["similarity"]) == (int(result["ids"][3]), 0.0, 100.0)
    assert first["ppn"] == result["ppn"][3] and first["filename"] == result["filename"][3]
    later = answers[0]["neighbours"][1:]
    np.testing.assert_allclose([n["distance"] for n in later], result["distances"][3][:2], atol=1e-6)
    assert answers[1] == {"query": str(notes), "error": "not a recognised image format"}
    assert f"  1  {result['ids'][3]}" in table and "100.0 %" in table


def test_query_refuses_artifacts_left_by_an_unfinished_run(demo_run, tmp_path):
    shutil.copytree(demo_run / "artifacts", tmp_path / "artifacts", ignore=shutil.ignore_patterns("features"))
    with h5py.File(tmp_path / "artifacts" / "reducer.h5", "a") as f:
        f.attrs["digest"] = "0123456789abcdef"  # a refit whose histograms were not made yet
    config = pipeline_config(tmp_path)
    done = run_module("tasks.query", config, os.path.join(DEMO, "PPN600007919", "00000001.jpg"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'artifacts' / 'histograms.h5'} was not made from the current "
        f"{tmp_path / 'artifacts' / 'reducer.h5'}: the last run did not finish; finish it "
        "(luigi --module tasks Nightly --local-scheduler) and query again"
    )
