"""What a run makes of its inputs: missing and bad inputs, settings, files, the CMS, the report."""

import datetime
import json
import os
import shutil
import sqlite3
import subprocess

import luigi
import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.collection import load_inventory
from pipeline.demo import make_cms
from pipeline.h5io import read_attrs
from pipeline.output import read_similarities
from tasks import (
    Evaluate,
    LoadSimilarities,
    Nightly,
    Similarities,
)

from .conftest import luigi_config, pipeline_config, write_config
from .runs import (  # noqa: F401 (fixtures)
    build,
    check_report_page,
    cms_rows,
    luigi_cli,
    luigi_in_process,
    nightly_equals,
    own_run,
    run,
    write_bad_files,
    write_unusual_images,
)


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


def test_load_similarities_fills_the_cms_once_per_run_and_again_when_its_table_is_dropped_or_emptied(
    own_run, monkeypatch, database
):
    root = own_run.root
    config = own_run.config(
        cms__url=database.url, cms__table=database.table, cms__marker_table=database.marker, cms__batch_rows=7
    )
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
            (
                int(image_id),
                rank + 1,
                int(similarities["neighbours"][i, rank]),
                float(similarities["distances"][i, rank]),
                run_id,
            )
            for i, image_id in enumerate(similarities["ids"])
            for rank in range(5)
        ]
        assert [(*row[:3], pytest.approx(row[3]), row[4]) for row in database.rows()] == sorted(expected)
        again = build(monkeypatch, config, LoadSimilarities)
        assert "ran successfully" not in again.summary_text, change
    with database.engine.connect() as conn:
        loads = conn.execute(sa.text(f"SELECT run_id, n_rows FROM {database.marker} ORDER BY load_id")).all()
    assert [tuple(r) for r in loads] == [(run_id, 90)] * 3


def test_ids_read_from_the_cms_give_the_csv_result(run, monkeypatch, small_collection, tmp_path):
    first, _ = run
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
        "ids__source": "cms",
        "cms__url": f"sqlite:///{database}",
        "cms__record_column": "work",
        "neighbours__same_record": "exclude",
    }
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


def test_files_that_must_be_rejected_change_nothing_else(run, monkeypatch, small_collection, tmp_path):
    first, _ = run
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
        ({"resnet__seed": "x"}, "[resnet] seed='x' must be a whole number"),
        ({"lock__heartbeat": "0"}, "[lock] heartbeat=0.0 must be a number of seconds > 0"),
        (
            {"resnet__weights": "/nonexistent/weights.h5"},
            "[resnet] weights='/nonexistent/weights.h5' is not a readable file",
        ),
        ({"ids__source": "cms"}, "[cms] url is empty"),
        ({"resnet__layer": "conv5_block4_out"}, "[resnet] layer='conv5_block4_out' is not a layer of ResNet50"),
        ({"images__decode_timeout": "0"}, "[images] decode_timeout=0.0 must be a number of seconds > 0"),
        ({"codebook__sise": "50"}, "[codebook] sise is not a setting; the settings of [codebook] are size, "),
        (
            {"resnet__decode_threads": "2"},
            "[resnet] decode_threads is not a setting; it is now [images] decode_processes",
        ),
        ({"reduction__descriptors": "l1"}, "[reduction] descriptors='l1' must be one of raw, l2, root"),
        ({"histograms__assign": "4"}, "[histograms] assign=4 must be a whole number from 1 to 3"),
        ({"neighbours__power": "0"}, "[neighbours] power=0.0 must be a number in (0, 1]"),
        ({"images__colour": "sepia"}, "[images] colour='sepia' must be one of grey, rgb"),
        ({"images__trim": "yes"}, "[images] trim='yes' must be true or false"),
        (
            {"resnet__precision": "int4"},
            "[resnet] precision='int4' must be one of auto, float32, float32-openvino, bfloat16, float16",
        ),
        ({"verdicts__source": "cms"}, "[verdicts] source = cms needs [cms] url"),
        ({"verdicts__source": "csv"}, "[verdicts] source = csv needs [verdicts] csv"),
        ({"verdicts__source": "sql"}, "[verdicts] source='sql' must be one of auto, cms, csv, none"),
        ({"histograms__shards": "0"}, "[histograms] shards=0 must be a whole number >= 1"),
        ({"neighbours__shards": "two"}, "[neighbours] shards='two' must be a whole number >= 1"),
        ({"neighbours__same_record": "most 2"}, "[neighbours] same_record='most 2' must be keep, exclude or at_most N"),
        ({"neighbours__same_record": "at_most -1"}, "[neighbours] same_record='at_most -1' must be keep, exclude or"),
        ({"cms__copies_table": "copies"}, "[cms] copies_table needs [cms] url"),
        (
            {"cms__copies_table": "copies", "cms__url": "sqlite:///cms.sqlite"},
            "[cms] copies_table is set but [copies] threshold = off",
        ),
        (
            {"cms__copies_table": "image_similarity", "cms__url": "sqlite:///cms.sqlite", "copies__threshold": "0.1"},
            "[cms] copies_table='image_similarity' is another table of the pipeline's",
        ),
        # known once the collection is listed, still before any image is extracted
        ({"neighbours__k": "18"}, "[neighbours] k=18 must be between 1 and the number of images - 1 = 17; lower it"),
        ({"neighbours__k": "16", "neighbours__same_record": "exclude"}, "[neighbours] same_record=exclude leaves the "),
        (
            {"codebook__size": "1000"},
            "[codebook] size=1000 must be between 2 and the number of sampled descriptors=882",
        ),
        (
            {"resnet__layer": "conv4_block6_out", "codebook__size": "1000", "codebook__sample_size": "1000"},
            "[codebook] size=1000 must be between 2 and the number of sampled descriptors=980",
        ),
    ],
)
def test_bad_settings_stop_the_run_before_any_work(monkeypatch, caplog, tmp_path, small_collection, override, message):
    (tmp_path / "content").symlink_to(small_collection[0])
    task = "Nightly" if "cms__copies_table" in override else "Similarities"  # the copies are the night's
    code = luigi_in_process(monkeypatch, pipeline_config(tmp_path, **override), tmp_path, task)
    assert code == 30, caplog.text[-2000:]
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    stage = "Inventory" if "the number of" in message or "leaves the" in message else "CheckSettings"
    assert report["failed_stage"] == stage and report["error"].startswith(f"ConfigError: {message}")
    assert "\n" not in report["error"] and message in caplog.text
    written = sorted(p.name for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith("run.lock"))
    assert written == ["run_report.json", "runs"]  # and the run lock, which this process holds


def test_a_run_checks_the_settings_of_its_own_stages_only(monkeypatch, caplog, tmp_path, small_collection):
    (tmp_path / "content").symlink_to(small_collection[0])
    config = pipeline_config(tmp_path, copies__threshold="auto", selfcheck__sample=0)  # copies need the self-check
    code = luigi_in_process(monkeypatch, config, tmp_path, "Inventory")
    assert code == 0, caplog.text[-2000:]  # a run without the copies is not stopped by their settings
    assert luigi_in_process(monkeypatch, config, tmp_path, "Nightly") == 30
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert (
        report["failed_stage"] == "CheckSettings"
        and "[copies] threshold = auto needs the self-check" in report["error"]
    )
    assert not (tmp_path / "artifacts" / "features.h5").exists()  # stopped before any work


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
    expected = {*load_inventory(run[0] / "artifacts" / "inventory.h5").ids.tolist(), *range(8000, 8000 + len(good))}
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
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    with luigi_config(monkeypatch, tmp_path / "luigi.cfg"):  # the next run
        assert not Evaluate(date=Nightly().date).complete()
