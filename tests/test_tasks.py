import csv
import datetime
import html.parser
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import h5py
import luigi
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image

from pipeline.collection import load_inventory
from pipeline.copies import read_copies, selfcheck_threshold
from pipeline.demo import make_cms
from pipeline.h5io import read_attrs
from pipeline.model import RANDOM_WEIGHTS_NOTE
from pipeline.output import read_similarities
from tasks import (
    Codebook,
    Copies,
    Evaluate,
    Features,
    Histograms,
    LoadCopies,
    LoadSimilarities,
    Nightly,
    Reducer,
    Similarities,
)

from .conftest import luigi_config, pipeline_config, png_declaring, write_config

ARTIFACTS = ("inventory.h5", "features.h5", "reducer.h5", "codebook.h5", "histograms.h5", "similarities.hdf5")


def build(monkeypatch, config, task=Similarities):
    with luigi_config(monkeypatch, config):
        return luigi.build([task()], local_scheduler=True, detailed_summary=True, workers=1)


def mtimes(artifacts):
    return {name: os.stat(artifacts / name).st_mtime_ns for name in ARTIFACTS}


@pytest.fixture(scope="module")
def run(small_collection, tmp_path_factory):
    """One pipeline run on the small collection, and the same run again into other artifacts."""
    content, groups = small_collection
    outputs = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("first", "second"):
            root = tmp_path_factory.mktemp(name)
            (root / "content").symlink_to(content)
            result = build(monkeypatch, pipeline_config(root))
            assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
            outputs.append(root)
    return outputs, groups


class OwnRun:
    """A copy of a run's artifacts under ``root``, reading the same collection."""

    def __init__(self, original, root):
        self.root = root
        shutil.copytree(original / "artifacts", root / "artifacts", ignore=shutil.ignore_patterns("run.lock*"))
        # the same content and mapping paths: the copied inventory stays valid
        self.inputs = {"paths__content": original / "content", "ids__csv": original / "content" / "image_ids.csv"}
        self.config()

    def config(self, **overrides):
        """Write the copy's luigi.cfg with ``overrides``; its path."""
        return pipeline_config(self.root, **self.inputs, **overrides)


@pytest.fixture()
def own_run(run, tmp_path):
    """A copy of the module's first run that a test may change: the module's run stays as it
    was whatever the test does, and whether it passes."""
    (first, _), _ = run
    return OwnRun(first, tmp_path)


def test_output_follows_the_contract(run):
    (root, _), groups = run
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    ids, neighbours, distances = result["ids"], result["neighbours"], result["distances"]
    mapped = sorted(i for group in groups.values() for i in group)
    assert sorted(ids.tolist()) == mapped and ids.dtype == np.int64
    assert neighbours.shape == distances.shape == (len(ids), 5) and distances.dtype == np.float32
    assert all(ids[i] not in neighbours[i] for i in range(len(ids)))
    assert set(neighbours.ravel()) <= set(ids)
    assert (np.diff(distances, axis=1) >= 0).all()
    where = {image_id: i for i, image_id in enumerate(ids)}
    for i in range(len(ids)):
        expected = [[result["ppn"][where[n]], result["filename"][where[n]]] for n in neighbours[i]]
        assert result["similarities"][i].tolist() == expected
    assert all(not p.startswith("PPN") for p in result["ppn"])
    attrs = result["attrs"]
    assert attrs["k"] == 5 and attrs["model"] == "ResNet50"
    assert attrs["metric"] == "cosine" and attrs["weighting"] == "tfidf"
    assert attrs["layer"] == "conv5_block3_3_conv" and attrs["weights"] == "random"
    assert attrs["weights_note"] == RANDOM_WEIGHTS_NOTE
    assert attrs["codebook_size"] == round(len(ids) * 49 / 8)  # size = auto
    assert attrs["power"] == 0.5
    assert {"created", "pipeline_version"} <= set(attrs)


def test_near_duplicates_are_found_far_better_than_chance(run):
    (root, _), groups = run
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    group_of = {i: name for name, members in groups.items() for i in members}
    first_hits = np.mean([group_of[n[0]] == group_of[i] for i, n in zip(result["ids"], result["neighbours"])])
    chance = 2 / (len(result["ids"]) - 1)
    assert first_hits >= 4 * chance, f"first neighbour in the same group for {first_hits:.0%} of the images"


def test_unmapped_files_and_rows_without_files_are_listed(run):
    (root, _), _ = run
    inventory = load_inventory(root / "artifacts" / "inventory.h5")
    assert len(inventory.unmapped) == 1 and inventory.unmapped[0].endswith(".jpg")
    assert len(inventory.missing) == 1 and "99999999.jpg" in inventory.missing[0]


def test_same_input_and_config_give_the_same_result(run):
    (first, second), _ = run
    a = read_similarities(first / "artifacts" / "similarities.hdf5")
    b = read_similarities(second / "artifacts" / "similarities.hdf5")
    for key in ("ids", "neighbours", "distances", "ppn", "filename", "similarities"):
        np.testing.assert_array_equal(a[key], b[key])


def test_rerun_skips_completed_tasks(own_run, monkeypatch):
    root = own_run.root
    before = mtimes(root / "artifacts")
    result = build(monkeypatch, root / "luigi.cfg")
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    assert "ran successfully" not in result.summary_text
    assert mtimes(root / "artifacts") == before


def test_changed_setting_reruns_only_the_stages_it_affects(own_run, monkeypatch):
    root = own_run.root
    before = mtimes(root / "artifacts")
    config = own_run.config(neighbours__k=3)
    assert build(monkeypatch, config).status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    after = mtimes(root / "artifacts")
    assert [name for name in ARTIFACTS if after[name] != before[name]] == ["similarities.hdf5"]
    with h5py.File(root / "artifacts" / "similarities.hdf5") as f:
        assert f["neighbours"].shape[1] == 3 and f.attrs["k"] == 3


def test_a_new_distance_or_auto_rule_redoes_only_what_depends_on_it(own_run, monkeypatch):
    root = own_run.root
    assert build(monkeypatch, root / "luigi.cfg").status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    with luigi_config(monkeypatch, root / "luigi.cfg"):
        assert Codebook().complete() and Similarities().complete()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("tasks.stages.DESCRIPTORS_PER_WORD", 5)  # what a new release of auto does
            assert Reducer().complete() and not Codebook().complete()
    for override in ({"neighbours__metric": "euclidean"}, {"neighbours__weighting": "raw"}, {"neighbours__power": 1.0}):
        with luigi_config(monkeypatch, own_run.config(**override)):
            assert Histograms().complete() and not Similarities().complete()
    with luigi_config(monkeypatch, own_run.config(histograms__assign=2)):
        assert Codebook().complete() and not Histograms().complete()
    for override in ({"reduction__descriptors": "root"}, {"reduction__reduced": "raw"}):
        with luigi_config(monkeypatch, own_run.config(**override)):
            assert not Reducer().complete() and not Codebook().complete()
    for override in (
        {"images__colour": "rgb"},
        {"images__trim": "false"},
        {"resnet__layer": "conv5_block3_out"},
        {"resnet__precision": "bfloat16"},
    ):
        with luigi_config(monkeypatch, own_run.config(**override)):  # other descriptors: another feature store
            assert not Features().complete() and not Reducer().complete()
    with luigi_config(monkeypatch, own_run.config(images__decode_processes=1, images__max_pixels=10**7)):
        assert Similarities().complete()


def test_reducer_is_fitted_on_the_configured_image_sample(own_run, monkeypatch):
    root = own_run.root
    config = own_run.config(reduction__sample_images=5)
    assert build(monkeypatch, config).status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    with h5py.File(root / "artifacts" / "reducer.h5") as f:
        assert f.attrs["n_samples_seen"] == 5 * 49


def test_truncated_artifact_is_made_again(own_run, monkeypatch):
    root = own_run.root
    path = root / "artifacts" / "codebook.h5"
    path.write_bytes(path.read_bytes()[:100])
    with luigi_config(monkeypatch, root / "luigi.cfg"):
        assert Reducer().complete()
        assert not Codebook().complete() and not Similarities().complete()
    assert build(monkeypatch, root / "luigi.cfg", Codebook).status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    with luigi_config(monkeypatch, root / "luigi.cfg"):
        # the same inputs and settings give the same codebook: what follows is valid again
        assert Codebook().complete() and Similarities().complete()


def luigi_in_process(monkeypatch, config, cwd, task="Similarities"):
    """The exit code of the ``luigi`` command's own main (``luigi.retcodes.run_with_retcodes``), run in
    this process with ``config``: the command line's behaviour without starting a Python."""
    from luigi.retcodes import run_with_retcodes

    monkeypatch.chdir(cwd)
    with luigi_config(monkeypatch, config), pytest.raises(SystemExit) as done:
        run_with_retcodes(["--module", "tasks", task, "--local-scheduler", "--no-lock"])
    return done.value.code


def luigi_cli(config, cwd):
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    luigi_bin = os.path.join(os.path.dirname(sys.executable), "luigi")
    return subprocess.run(
        [luigi_bin, "--module", "tasks", "Similarities", "--local-scheduler"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "missing, message",
    [
        ("mapping", "MissingInput: [ids] csv='{root}/none.csv' does not exist; export the CMS's images to it"),
        ("content", "MissingInput: [paths] content='{root}/content' does not exist; set it to the folder that holds"),
    ],
)
def test_cli_exits_non_zero_on_a_missing_input_naming_the_setting(tmp_path, small_collection, missing, message):
    if missing == "mapping":
        (tmp_path / "content").symlink_to(small_collection[0])
        csv = tmp_path / "none.csv"
    else:
        csv = small_collection[0] / "image_ids.csv"
    done = luigi_cli(pipeline_config(tmp_path, ids__csv=csv), tmp_path)
    assert done.returncode == 20, done.stderr[-2000:]
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    expected = message.format(root=tmp_path)
    assert report["status"] == "failed" and report["error"].startswith(expected) and "\n" not in report["error"]
    assert expected.split(": ", 1)[1] in done.stderr
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["run_report.json", "runs"]


def test_cli_exits_non_zero_on_a_bad_mapping_with_a_one_line_reason(tmp_path, small_collection):
    (tmp_path / "content").symlink_to(small_collection[0])
    (tmp_path / "bad.csv").write_text("id,ppn,filename\n1,PPN1,a.jpg\n1,PPN2,b.jpg\n")
    done = luigi_cli(pipeline_config(tmp_path, ids__csv=tmp_path / "bad.csv"), tmp_path)
    assert done.returncode == 30
    assert "repeats the same ID on lines 2, 3" in done.stderr
    assert not (tmp_path / "artifacts" / "inventory.h5").exists()
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "Inventory"
    assert report["error"].startswith("MappingError: [ids] csv=") and "\n" not in report["error"]


def cms_rows(database, table="image_similarity"):
    with sqlite3.connect(database) as db:
        return db.execute(
            f"SELECT image_id, rank, similar_image_id, distance, run_id FROM {table} ORDER BY 1, 2"
        ).fetchall()


def test_load_similarities_fills_the_cms_once_per_run_and_again_when_its_table_is_dropped_or_emptied(
    own_run, monkeypatch, database
):
    root = own_run.root
    config = own_run.config(cms__url=database.url, cms__table=database.table, cms__marker_table=database.marker,
                             cms__batch_rows=7)  # fmt: skip
    quoted = database.engine.dialect.identifier_preparer.quote(database.table)
    for change in (None, f"DROP TABLE {quoted}", f"DELETE FROM {quoted}"):  # a DBA's cleanup, a test database reset
        if change:
            with database.engine.begin() as conn:
                conn.execute(sa.text(change))
        result = build(monkeypatch, config, LoadSimilarities)
        assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
        assert "ran successfully" in result.summary_text, change
        similarities = read_similarities(root / "artifacts" / "similarities.hdf5")
        run_id = similarities["attrs"]["digest"]
        expected = [
            (int(image_id), rank + 1, int(similarities["neighbours"][i, rank]),
             float(similarities["distances"][i, rank]), run_id)
            for i, image_id in enumerate(similarities["ids"]) for rank in range(5)
        ]  # fmt: skip
        assert [(*row[:3], pytest.approx(row[3]), row[4]) for row in database.rows()] == sorted(expected)
        again = build(monkeypatch, config, LoadSimilarities)
        assert "ran successfully" not in again.summary_text, change
    with database.engine.connect() as conn:
        loads = conn.execute(sa.text(f"SELECT run_id, n_rows FROM {database.marker} ORDER BY load_id")).all()
    assert [tuple(r) for r in loads] == [(run_id, 90)] * 3


def nightly_equals(monkeypatch, config, expected_root, root):
    """Run Nightly with ``config``, check its neighbours equal those under ``expected_root``; its report."""
    result = build(monkeypatch, config, Nightly)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    a = read_similarities(expected_root / "artifacts" / "similarities.hdf5")
    b = read_similarities(root / "artifacts" / "similarities.hdf5")
    for key in ("ids", "neighbours", "distances"):
        np.testing.assert_array_equal(a[key], b[key])
    return json.loads((root / "artifacts" / "run_report.json").read_text())


@pytest.mark.parametrize("same_record, most", [("exclude", 0), ("at_most 1", 1)])
def test_same_record_limits_the_lists_and_reruns_only_the_search(own_run, monkeypatch, same_record, most):
    before = mtimes(own_run.root / "artifacts")
    with luigi_config(monkeypatch, own_run.config(neighbours__same_record=same_record)):
        assert luigi.build([Nightly()], local_scheduler=True, workers=1)
    after = mtimes(own_run.root / "artifacts")
    assert [name for name in ARTIFACTS if before[name] != after[name]] == ["similarities.hdf5"]
    result = read_similarities(own_run.root / "artifacts" / "similarities.hdf5")
    at = {i: p for p, i in enumerate(result["ids"].tolist())}
    listed = np.vectorize(at.get)(result["neighbours"])  # the neighbours' positions
    own = (result["ppn"][listed] == result["ppn"][:, None]).sum(axis=1)
    assert own.max() == most  # the small collection has 8 records
    report = json.loads((own_run.root / "artifacts" / "run_report.json").read_text())
    assert report["neighbours"]["same_record"] == same_record
    assert report["neighbours"]["own_record_share"] == round(own.sum() / result["neighbours"].size, 4)


def test_sharded_stages_give_the_same_result(run, monkeypatch, small_collection, tmp_path):
    (first, _), _ = run
    (tmp_path / "content").symlink_to(small_collection[0])
    config = pipeline_config(tmp_path, features__shards=3, histograms__shards=2, neighbours__shards=4)
    report = nightly_equals(monkeypatch, config, first, tmp_path)
    shards = sorted(p.name for p in (tmp_path / "artifacts" / "shards").iterdir())
    assert shards == sorted(
        [f"features-000{i}-of-0003.h5" for i in range(3)]
        + [f"histograms-000{i}-of-0002.h5" for i in range(2)]
        + [f"neighbours-000{i}-of-0004.h5" for i in range(4)]
    )
    features = [read_attrs(tmp_path / "artifacts" / "shards" / f"features-000{i}-of-0003.h5") for i in range(3)]
    counts = [a["images"] for a in features]
    assert sum(counts) == 18 and min(counts) > 0 and report["extracted"] == 18
    for kind, shards in (("histograms", 2), ("neighbours", 4)):  # each shard did its part
        paths = [tmp_path / "artifacts" / "shards" / f"{kind}-000{i}-of-000{shards}.h5" for i in range(shards)]
        assert all(read_attrs(p)["run_date"] == report["date"] for p in paths)
    assert all(report["stage_seconds"][stage] > 0 for stage in ("FeatureShard", "HistogramShard", "NeighbourShard"))


def test_ids_read_from_the_cms_give_the_csv_result(run, monkeypatch, small_collection, tmp_path):
    (first, _), _ = run
    content = small_collection[0]
    make_cms(tmp_path / "cms.sqlite", content / "image_ids.csv")
    (tmp_path / "content").symlink_to(content)
    config = pipeline_config(
        tmp_path, ids__source="cms", ids__csv=tmp_path / "none.csv", cms__url=f"sqlite:///{tmp_path / 'cms.sqlite'}"
    )
    report = nightly_equals(monkeypatch, config, first, tmp_path)
    assert (
        report["cms"]["images"] == 18
        and report["cms"]["target"] == "image_similarity"
        and len(cms_rows(tmp_path / "cms.sqlite")) == 90
    )


def test_records_from_a_cms_column_limit_the_lists_and_a_changed_record_is_searched_again(
    monkeypatch, small_collection, tmp_path
):
    content = small_collection[0]
    database = tmp_path / "cms.sqlite"
    make_cms(database, content / "image_ids.csv")
    (tmp_path / "content").symlink_to(content)
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE images ADD COLUMN work TEXT")
        db.execute("UPDATE images SET work = 'w' || (id % 3)")
    settings = {
        "ids__source": "cms", "cms__url": f"sqlite:///{database}", "cms__record_column": "work",
        "neighbours__same_record": "exclude",
    }  # fmt: skip
    for day, date in enumerate(["2026-03-01", "2026-03-02"]):
        if day:  # the CMS moves some images to another work
            with sqlite3.connect(database) as db:
                db.execute("UPDATE images SET work = 'w' || ((id + 1) % 3) WHERE id % 2 = 0")
        with luigi_config(monkeypatch, pipeline_config(tmp_path, **settings)):
            assert luigi.build([Similarities(date=datetime.date.fromisoformat(date))], local_scheduler=True)
        with sqlite3.connect(database) as db:
            work = dict(db.execute("SELECT id, work FROM images").fetchall())
        result = read_similarities(tmp_path / "artifacts" / "similarities.hdf5")
        assert read_attrs(tmp_path / "artifacts" / "similarities.hdf5")["search"] == (
            "full" if day == 0 else "incremental"
        )
        for image, listed in zip(result["ids"].tolist(), result["neighbours"].tolist()):
            assert all(work[other] != work[image] for other in listed)
        # the same night searched in full gives the same lists
        full = tmp_path / f"full-{day}"
        shutil.copytree(
            tmp_path / "artifacts",
            full / "artifacts",
            ignore=shutil.ignore_patterns("similarities.hdf5", "neighbours-*", "run.lock*"),
        )
        with luigi_config(monkeypatch, pipeline_config(full, **settings, paths__content=content)):
            assert luigi.build([Similarities(date=datetime.date.fromisoformat(date))], local_scheduler=True)
        np.testing.assert_array_equal(
            read_similarities(full / "artifacts" / "similarities.hdf5")["neighbours"], result["neighbours"]
        )


def test_a_bad_cms_mapping_fails_the_run_with_a_one_line_reason(monkeypatch, tmp_path, small_collection):
    (tmp_path / "content").symlink_to(small_collection[0])
    with sqlite3.connect(tmp_path / "cms.sqlite") as db:
        db.execute("CREATE TABLE images (id INTEGER, ppn TEXT, filename TEXT)")
        db.executemany("INSERT INTO images VALUES (?, ?, ?)", [(1, "PPN1", "a.jpg"), (2, None, "b.jpg")])
    config = pipeline_config(tmp_path, ids__source="cms", cms__url=f"sqlite:///{tmp_path / 'cms.sqlite'}")
    assert luigi_in_process(monkeypatch, config, tmp_path) == 30
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert report["error"] == "MappingError: [cms] images_table='images' has empty or NULL values on row(s) 2"


def test_a_missing_cms_database_is_a_missing_input(monkeypatch, caplog, tmp_path, small_collection):
    (tmp_path / "content").symlink_to(small_collection[0])
    config = pipeline_config(tmp_path, ids__source="cms", cms__url=f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert luigi_in_process(monkeypatch, config, tmp_path) == 20, caplog.text[-2000:]
    assert "CmsImages" in caplog.text and not (tmp_path / "none.sqlite").exists()
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert report["failed_stage"] == "CmsImages" and report["error"] == (
        f"MissingInput: the CMS database at [cms] url=sqlite:///{tmp_path / 'none.sqlite'} does not answer or has "
        "no table [cms] images_table='images'; check that the server runs, the URL, and the table"
    )


def write_bad_files(folder):
    """Files a collection holds that must be rejected, by name -> what they are."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    photo = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(photo).save(folder / "full.jpg")
    Image.fromarray(photo).save(folder / "full.png")
    bad = {
        "zero bytes.jpg": b"",
        "truncated.jpg": (folder / "full.jpg").read_bytes()[:2000],
        "truncated.png": (folder / "full.png").read_bytes()[:3000],
        "error page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "random.png": rng.bytes(5000),
    }
    (folder / "full.jpg").unlink()
    (folder / "full.png").unlink()
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    png_declaring(folder / "bomb.png", 100_000, 100_000)
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "notes.txt").write_text("not an image, yet named by the mapping")
    (folder / "Thumbs.db").write_bytes(b"thumbs")  # skipped quietly, by rule
    (folder / ".DS_Store").write_bytes(b"finder")
    return [*bad, "bomb.png", "dangling.jpg", "loop.jpg", "notes.txt"]


def test_files_that_must_be_rejected_change_nothing_else(run, monkeypatch, small_collection, tmp_path):
    (first, _), _ = run
    shutil.copytree(small_collection[0], tmp_path / "content", symlinks=True)
    names = write_bad_files(tmp_path / "content" / "PPN77 Ärchiv")
    with open(tmp_path / "content" / "image_ids.csv", "a") as f:
        f.writelines(f"{9000 + i},PPN77 Ärchiv,{name}\n" for i, name in enumerate(names))
    report = nightly_equals(monkeypatch, pipeline_config(tmp_path), first, tmp_path)
    rejected = {item["path"]: item["reason"] for item in report["rejected"]}
    assert sorted(rejected) == sorted(f"PPN77 Ärchiv/{name}" for name in names)
    assert all(reason and "\n" not in reason for reason in rejected.values())
    assert "max_pixels" in rejected["PPN77 Ärchiv/bomb.png"]
    assert report["unmapped"] == load_inventory(first / "artifacts" / "inventory.h5").unmapped


@pytest.mark.parametrize(
    "override, message",
    [
        ({"neighbours__k": "five"}, "[neighbours] k='five' must be a whole number >= 1"),
        ({"neighbours__k": "0"}, "[neighbours] k=0 must be a whole number >= 1"),
        ({"codebook__size": "lots"}, "[codebook] size='lots' must be auto or a whole number >= 2"),
        ({"reduction__variance": "1.5"}, "[reduction] variance=1.5 must be a fraction in (0, 1]"),
        ({"collection__fingerprint": "md5"}, "[collection] fingerprint='md5' must be one of stat, sha256"),
        ({"resnet__seed": "x"}, "[resnet] seed='x' cannot be read (invalid literal for int() with base 10: 'x')"),
        ({"lock__heartbeat": "0"}, "[lock] heartbeat=0.0 must be a number of seconds > 0"),
        ({"resnet__weights": "/nonexistent/weights.h5"}, "[resnet] weights='/nonexistent/weights.h5' is not a readable file"),
        ({"ids__source": "cms"}, "[cms] url is empty"),
        ({"resnet__layer": "conv5_block4_out"}, "[resnet] layer='conv5_block4_out' is not a layer of ResNet50"),
        ({"images__decode_timeout": "0"}, "[images] decode_timeout=0.0 must be a number of seconds > 0"),
        ({"codebook__sise": "50"}, "[codebook] sise is not a setting; the settings of [codebook] are size, "),
        ({"resnet__decode_threads": "2"}, "[resnet] decode_threads is not a setting; it is now [images] decode_processes"),
        ({"reduction__descriptors": "l1"}, "[reduction] descriptors='l1' must be one of raw, l2, root"),
        ({"histograms__assign": "4"}, "[histograms] assign=4 must be a whole number from 1 to 3"),
        ({"neighbours__power": "0"}, "[neighbours] power=0.0 must be a number in (0, 1]"),
        ({"images__colour": "sepia"}, "[images] colour='sepia' must be one of grey, rgb"),
        ({"images__trim": "yes"}, "[images] trim='yes' must be true or false"),
        ({"resnet__precision": "int4"}, "[resnet] precision='int4' must be one of auto, float32, bfloat16, float16"),
        ({"verdicts__source": "cms"}, "[verdicts] source = cms needs [cms] url"),
        ({"verdicts__source": "csv"}, "[verdicts] source = csv needs [verdicts] csv"),
        ({"verdicts__source": "sql"}, "[verdicts] source='sql' must be one of auto, cms, csv, none"),
        ({"histograms__shards": "0"}, "[histograms] shards=0 must be a whole number >= 1"),
        ({"neighbours__shards": "two"}, "[neighbours] shards='two' must be a whole number >= 1"),
        ({"neighbours__same_record": "most 2"}, "[neighbours] same_record='most 2' must be keep, exclude or at_most N"),
        ({"neighbours__same_record": "at_most -1"}, "[neighbours] same_record='at_most -1' must be keep, exclude or"),
        ({"cms__copies_table": "copies"}, "[cms] copies_table needs [cms] url"),
        ({"cms__copies_table": "copies", "cms__url": "sqlite:///cms.sqlite"}, "[cms] copies_table is set but [copies] threshold = off"),
        ({"cms__copies_table": "image_similarity", "cms__url": "sqlite:///cms.sqlite", "copies__threshold": "0.1"},
         "[cms] copies_table='image_similarity' is another table of the pipeline's"),
        # known once the collection is listed, still before any image is extracted
        ({"neighbours__k": "18"}, "[neighbours] k=18 must be between 1 and the number of images - 1 = 17; lower it"),
        ({"neighbours__k": "16", "neighbours__same_record": "exclude"}, "[neighbours] same_record=exclude leaves the "),
        ({"codebook__size": "1000"}, "[codebook] size=1000 must be between 2 and the number of sampled descriptors=882"),
        ({"resnet__layer": "conv4_block6_out", "codebook__size": "1000", "codebook__sample_size": "1000"},
         "[codebook] size=1000 must be between 2 and the number of sampled descriptors=980"),
    ],
)  # fmt: skip
def test_bad_settings_stop_the_run_before_any_work(monkeypatch, caplog, tmp_path, small_collection, override, message):
    (tmp_path / "content").symlink_to(small_collection[0])
    code = luigi_in_process(monkeypatch, pipeline_config(tmp_path, **override), tmp_path)
    assert code == 30, caplog.text[-2000:]
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    stage = "Inventory" if "the number of" in message or "leaves the" in message else "CheckSettings"
    assert report["failed_stage"] == stage and report["error"].startswith(f"ConfigError: {message}")
    assert "\n" not in report["error"] and message in caplog.text
    written = sorted(p.name for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith("run.lock"))
    assert written == ["run_report.json", "runs"]  # and the run lock, which this process holds


def write_unusual_images(folder):
    """Valid images of the kinds scanners and exports write, by name; each must be processed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.random((90, 120)) * 65535).astype(np.uint16)).save(folder / "grey 16-bit.png")
    photo.convert("1").save(folder / "one-bit.png", transparency=0)
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    photo.convert("RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif)
    photo.save(folder / "pages.tif", save_all=True, append_images=[photo.rotate(90)])
    photo.save(folder / "animated.gif", save_all=True, append_images=[photo.rotate(90)], duration=100)
    Image.new("RGB", (1, 1), (90, 10, 200)).save(folder / "pixel.png")
    Image.new("RGB", (20000, 10), (10, 90, 200)).save(folder / "strip.png")
    photo.save(folder / "überschrift ñ.jpg")
    # the mapping decides what an image is, not the extension: each of these is decoded
    for name in ("colour.ppm", "grey.pgm", "bitonal.pbm", "any.pnm", "photo.tga", "UPPER.JPG", "no extension"):
        mode = {"grey.pgm": "L", "bitonal.pbm": "1"}.get(name, "RGB")
        photo.convert(mode).save(folder / name, {"photo.tga": "TGA", "no extension": "PNG"}.get(name))
    for name in ("stream.j2k", "container.jpf", "extended.jpx"):
        photo.save(folder / name, "JPEG2000", no_jp2=name.endswith(".j2k"))
    return sorted(p.name for p in folder.iterdir())


def test_unusual_images_are_processed_and_bad_files_rejected_in_one_run(run, monkeypatch, small_collection, tmp_path):
    shutil.copytree(small_collection[0], tmp_path / "content", symlinks=True)
    good = write_unusual_images(tmp_path / "content" / "PPN88 Sämmlung")
    bad = write_bad_files(tmp_path / "content" / "PPN77 Ärchiv")
    with open(tmp_path / "content" / "image_ids.csv", "a") as f:
        f.writelines(f"{8000 + i},PPN88 Sämmlung,{name}\n" for i, name in enumerate(good))
        f.writelines(f"{9000 + i},PPN77 Ärchiv,{name}\n" for i, name in enumerate(bad))
        f.write("9999,PPN77 Ärchiv,gone.jpg\n")
    result = build(monkeypatch, pipeline_config(tmp_path), Nightly)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    similarities = read_similarities(tmp_path / "artifacts" / "similarities.hdf5")
    expected = {*load_inventory(run[0][0] / "artifacts" / "inventory.h5").ids.tolist(), *range(8000, 8000 + len(good))}
    assert set(similarities["ids"].tolist()) == expected  # every good image, none of the bad
    assert set(similarities["neighbours"].ravel().tolist()) <= expected
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert sorted(item["path"] for item in report["rejected"]) == sorted(f"PPN77 Ärchiv/{name}" for name in bad)
    assert "9999 PPN77 Ärchiv/gone.jpg" in report["missing"]
    existing = [m for m in report["missing"] if os.path.lexists(tmp_path / "content" / m.split(" ", 1)[1])]
    assert not existing  # missing: only what does not exist
    reasons = {item["path"]: item["reason"] for item in report["rejected"]}
    assert (
        reasons["PPN77 Ärchiv/notes.txt"] == reasons["PPN77 Ärchiv/error page.jpg"] == "not a recognised image format"
    )
    leaked = [r for r in reasons.values() if str(tmp_path) in r or "Ärchiv" in r]
    assert not leaked  # the machine's folders stay private
    check_report_page(tmp_path / "artifacts")


def test_a_collection_without_images_stops_the_run_naming_the_setting(monkeypatch, caplog, tmp_path, small_collection):
    (tmp_path / "content" / "PPN1").mkdir(parents=True)
    (tmp_path / "content" / "PPN1" / "Thumbs.db").write_bytes(b"\0" * 10)
    config = pipeline_config(tmp_path, ids__csv=small_collection[0] / "image_ids.csv")
    assert luigi_in_process(monkeypatch, config, tmp_path) == 30, caplog.text[-2000:]
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert report["failed_stage"] == "Inventory"
    assert report["error"].startswith(
        f"CollectionError: no image under [paths] content='{tmp_path / 'content'}' (0 image files)"
    )
    written = sorted(p.name for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith("run.lock"))
    assert written == ["run_report.json", "runs"]  # and the run lock, which this process holds


def test_progress_goes_to_luigi_at_every_call_and_to_the_log_at_the_interval(tmp_path, monkeypatch, caplog):
    from tasks.base import Progress

    class Task:
        task_id = "FeatureShard(shard=1)"

        def __init__(self):
            self.messages, self.percentages = [], []

        def set_status_message(self, message):
            self.messages.append(message)

        def set_progress_percentage(self, percentage):
            self.percentages.append(percentage)

    task = Task()
    with luigi_config(monkeypatch, write_config(tmp_path / "luigi.cfg", {"progress": {"interval": 3600}})):
        progress = Progress(task, "extracted")
        caplog.set_level("INFO", logger="luigi-interface")
        for done in (16, 32, 48):
            progress(done, 48)
    assert task.percentages == [33, 67, 100]
    assert task.messages[0].startswith("extracted 16 / 48 images, ") and "images/s, about " in task.messages[0]
    assert task.messages[-1].endswith("about 0 s left")
    logged = [r.getMessage() for r in caplog.records if "extracted" in r.getMessage()]
    assert logged == [f"FeatureShard(shard=1): {task.messages[-1]}"]  # the interval is an hour: only the end


class ReportPage(html.parser.HTMLParser):
    """What report.html shows: per sampled image its figures, the plots, the map's dots, the rejected rows."""

    def __init__(self, text):
        super().__init__()
        self.queries, self.plots, self.dots, self.rejected, self.images = [], 0, 0, 0, []
        self.places = []
        self._in_rejected_table = False
        self.feed(text)
        self.text = text

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "query":
            self.queries.append([])
        elif tag == "img" and self.queries and not self.dots:
            self.queries[-1].append(attrs["src"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "figure" and attrs.get("class") == "plot":
            self.plots += 1
        if tag == "div" and attrs.get("class") == "dot":
            self.dots += 1
            self.places.append(attrs["style"])
        if tag == "table":
            self._in_rejected_table = attrs.get("class") == "rejected"
        if tag == "td" and self._in_rejected_table:
            self.rejected += 1


def check_report_page(artifacts, sample=12):
    """report.html beside run_report.json: every sampled image with five neighbour thumbnails."""
    run = json.loads((artifacts / "run_report.json").read_text())
    page = ReportPage((artifacts / "report.html").read_text())
    assert len(page.queries) == min(sample, run["images_with_neighbours"])
    assert all(
        len(figures) == 6 and all(src.startswith("data:image/jpeg;base64,") for src in figures)
        for figures in page.queries
    )
    assert page.plots == 5 and page.dots == run["images_with_neighbours"]
    assert len(set(page.places)) == page.dots  # one cell each on the map
    captions = re.findall(r"distance (\d+\.\d{4}), similarity (\d+\.\d) %", page.text)
    assert len(captions) == 5 * len(page.queries)
    assert all(abs(float(s) - 100 * (1 - float(d))) < 0.06 for d, s in captions)  # cosine: 100 x (1 - distance)
    assert page.rejected == 2 * len(run["rejected"])  # path and reason
    assert "http" not in "".join(page.images)  # self-contained
    return page


def test_the_visual_report_shows_in_a_headless_browser(monkeypatch, small_collection, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    (tmp_path / "content").symlink_to(small_collection[0])
    result = build(monkeypatch, pipeline_config(tmp_path, report__sample=4), Nightly)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    check_report_page(tmp_path / "artifacts", sample=4)
    # the page as the browser shows it: every thumbnail decoded, nothing fetched from elsewhere
    probe = tmp_path / "probe.html"
    probe.write_text(
        (tmp_path / "artifacts" / "report.html")
        .read_text()
        .replace(
            "</body>",
            "<script>document.body.dataset.images = document.images.length;"
            "document.body.dataset.broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;"
            # the map as laid out: thumbnails that overlap another, or stick out of the map
            "const box = document.getElementById('map').getBoundingClientRect();"
            "const dots = [...document.querySelectorAll('.dot')].map(d => d.getBoundingClientRect());"
            "document.body.dataset.overlapping = dots.filter((a, i) => dots.some((b, j) => i !== j &&"
            " a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)).length;"
            "document.body.dataset.outside = dots.filter(a => a.left < box.left || a.right > box.right ||"
            " a.top < box.top || a.bottom > box.bottom).length;"
            "</script></body>",
        )
    )
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-broken="0"' in done.stdout and 'data-images="' in done.stdout
    assert 'data-overlapping="0"' in done.stdout and 'data-outside="0"' in done.stdout
    shown = int(done.stdout.split('data-images="')[1].split('"')[0])
    assert shown == 4 * 6 + 18  # the sampled rows and the map


def test_evaluate_scores_the_neighbours_against_labels_in_every_run(monkeypatch, small_collection, tmp_path):
    content, groups = small_collection
    (tmp_path / "content").symlink_to(content)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{name}\n" for name, members in groups.items() for i in members))
    result = build(monkeypatch, pipeline_config(tmp_path, evaluate__labels=labels), Nightly)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    scores = json.loads((tmp_path / "artifacts" / "evaluation.json").read_text())
    assert scores["queries"] == 18 and set(scores["per_label"]) == set(groups)
    # near-duplicates are found far better than chance (2 of the 17 other images share a label)
    assert scores["precision_at_1"] > 0.5 > 2 / 17
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert report["evaluation"]["map"] == scores["map"]
    assert 'class="quality"' in (tmp_path / "artifacts" / "report.html").read_text()
    with luigi_config(monkeypatch, tmp_path / "luigi.cfg"):
        assert Evaluate(date=Nightly().date).complete()  # up to date until the neighbours or the labels change
        labels.write_text(labels.read_text() + "999,unknown\n")
        assert not Evaluate(date=Nightly().date).complete()


DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "content")


def run_module(module, config, *args):
    """``python -m module args`` in the folder of ``config``, as a user runs it."""
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=config.parent, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A nightly run on the bundled demo collection with its labels and a self-check of every image."""
    root = tmp_path_factory.mktemp("demo")
    (root / "content").symlink_to(DEMO)
    config = pipeline_config(
        root, evaluate__labels=os.path.join(DEMO, "labels.csv"), selfcheck__sample=51, report__sample=2,
        copies__threshold="auto",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = build(monkeypatch, config, Nightly)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    return root


def test_self_check_finds_altered_copies_far_better_than_chance_on_the_demo(demo_run):
    report = json.loads((demo_run / "artifacts" / "run_report.json").read_text())
    check = report["selfcheck"]
    assert check["images"] == 51 and check["queries"] == 51 * 6 and check["failed"] == {}
    assert check["chance_top1"] == round(1 / 51, 6) and check["chance_top5"] == round(5 / 51, 6)
    # random weights, and still: the original first for a third of the copies (chance: 2 %)
    assert check["top1"] >= 0.33 and check["top5"] >= 0.66
    assert all(rates["queries"] == 51 for rates in check["per_alteration"].values())
    saved = json.loads((demo_run / "artifacts" / "selfcheck.json").read_text())
    assert saved["top1"] == check["top1"] and saved["made_from"]["sample"] == 51
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


def test_query_prints_the_neighbours_of_any_file(demo_run):
    result = read_similarities(demo_run / "artifacts" / "similarities.hdf5")
    inventory = load_inventory(demo_run / "artifacts" / "inventory.h5")
    relpath = {i: f.relpath for i, f in zip(inventory.ids.tolist(), inventory.files)}
    image = os.path.join(DEMO, relpath[int(result["ids"][3])])
    (demo_run / "notes.txt").write_text("not an image")
    done = run_module("tasks.query", demo_run / "luigi.cfg", "--json", "-k", 3, image, demo_run / "notes.txt")
    assert done.returncode == 1, done.stderr[-2000:]  # one file could not be read
    answers = json.loads(done.stdout)
    first = answers[0]["neighbours"][0]
    # a collection image finds itself, then (distance ties aside) the neighbours of the run
    assert (first["id"], first["distance"], first["similarity"]) == (int(result["ids"][3]), 0.0, 100.0)
    assert first["ppn"] == result["ppn"][3] and first["filename"] == result["filename"][3]
    later = answers[0]["neighbours"][1:]
    np.testing.assert_allclose([n["distance"] for n in later], result["distances"][3][:2], atol=1e-6)
    assert answers[1] == {"query": str(demo_run / "notes.txt"), "error": "not a recognised image format"}
    table = run_module("tasks.query", demo_run / "luigi.cfg", image)
    assert table.returncode == 0 and f"  1  {result['ids'][3]}" in table.stdout and "100.0 %" in table.stdout


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


def test_compare_prints_the_grid_best_first_reusing_the_features(run, tmp_path):
    (root, _), groups = run
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{name}\n" for name, members in groups.items() for i in members))
    rows = tmp_path / "rows.json"
    done = run_module(
        "tasks.compare", root / "luigi.cfg", "--sizes", "8,auto", "--trims", "true,false", "--labels", labels,
        "--selfcheck", 3, "--json", rows,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "extracting 0 images, reusing 18" in done.stderr  # the run's feature store (trim = true)
    assert "extracting 18 images, reusing 0" in done.stderr  # another for trim = false
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "18 images, weights random; best first"
    assert lines[1].startswith(
        "| layer | colour | trim | descriptors | reduced | K | assign | weighting | power | metric | mAP | P@1 | P@5 | R@5 | self-check top-1 |"
    )
    assert len(lines) == 3 + 2 * 2 * 2 * 2
    saved = json.loads(rows.read_text())["rows"]
    assert [r["map"] for r in saved] == sorted((r["map"] for r in saved), reverse=True)
    assert {r["codebook"] for r in saved} == {"8", "110 (auto)"} and {r["trim"] for r in saved} == {True, False}
    assert all(r["queries"] == 18 and 0 <= r["selfcheck_top1"] <= 1 for r in saved)


def change_collection(content, rng, date):
    """A night's change: one image removed, one rescanned (changed), two added (IDs from 7000 on)."""
    header, *rows = (content / "image_ids.csv").read_text().splitlines()
    rows = [r for r in rows if os.path.exists(content / r.split(",")[1] / r.split(",")[2])]
    removed, changed, source = (rows[i] for i in rng.choice(len(rows), size=3, replace=False))
    rows.remove(removed)
    _, ppn, name = removed.split(",")
    os.remove(content / ppn / name)
    _, ppn, name = changed.split(",")
    with Image.open(content / ppn / name) as image:
        image.rotate(3, expand=True).convert("L").convert("RGB").save(content / ppn / name, "JPEG", quality=60)
    _, ppn, name = source.split(",")
    for n in range(2):
        with Image.open(content / ppn / name) as image:
            image.crop((n * 8, 0, image.width, image.height - n * 8)).save(content / ppn / f"{date}-{n}.jpg", "JPEG")
        rows.append(f"{7000 + len(rows) * 10 + n},{ppn},{date}-{n}.jpg")
    (content / "image_ids.csv").write_text("\n".join([header, *rows]) + "\n")


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


def test_incremental_neighbours_and_loads_equal_a_full_run_date_after_date(
    monkeypatch, caplog, small_collection, tmp_path
):
    content = tmp_path / "content"
    shutil.copytree(small_collection[0], content)
    database = tmp_path / "cms.sqlite"
    config = pipeline_config(tmp_path, cms__url=f"sqlite:///{database}")
    rng = np.random.default_rng(0)
    artifacts = tmp_path / "artifacts"
    monkeypatch.setattr(LoadSimilarities, "INCREMENTAL_SHARE", 1.0)  # in 20 images, most lists change
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
            for p, i in enumerate(result["ids"]) for r in range(5)
        )  # fmt: skip
        assert ("every row is loaded" in caplog.text) == (day == 0), caplog.text[-2000:]
        # the same date again from scratch, without the earlier lists: every image searched
        full = tmp_path / f"full-{day}"
        ignored = shutil.ignore_patterns("similarities.hdf5", "neighbours-*", "run.lock*")
        shutil.copytree(artifacts, full / "artifacts", ignore=ignored)
        with luigi_config(
            monkeypatch, pipeline_config(full, paths__content=content, ids__csv=content / "image_ids.csv")
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
