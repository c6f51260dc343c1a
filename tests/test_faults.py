"""Storage faults between two nights: a half-missing collection stops the night before any write;
damaged artifacts are repaired (with a warning) and give the lists of a clean run.

Every run here uses the tiny stand-in model (``tests.faults.TinyBackend``): the faults are
about the artifacts, not about ResNet50."""

import datetime
import json
import os
import shutil
import sqlite3

import luigi
import numpy as np
import pytest

from pipeline import backends, collection
from pipeline.output import read_similarities
from tasks import Nightly

from .conftest import luigi_config, pipeline_config
from .faults import TinyBackend
from .runs import cms_rows

FIRST, SECOND = datetime.date(2026, 5, 1), datetime.date(2026, 5, 2)
Status = luigi.execution_summary.LuigiStatusCode


def night(monkeypatch, root, date, **overrides):
    """Nightly of ``date`` under ``root`` (its content, artifacts and SQLite CMS) with the tiny model."""
    monkeypatch.setitem(backends.BACKENDS, "keras", TinyBackend)
    config = pipeline_config(root, cms__url=f"sqlite:///{root / 'cms.sqlite'}", **overrides)
    with luigi_config(monkeypatch, config):
        return luigi.build([Nightly(date=date)], local_scheduler=True, detailed_summary=True, workers=1)


@pytest.fixture(scope="module")
def first_night(small_collection, tmp_path_factory):
    """A finished first night on a copy of the small collection (content, artifacts, CMS)."""
    root = tmp_path_factory.mktemp("first-night")
    shutil.copytree(small_collection[0], root / "content")
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = night(monkeypatch, root, FIRST)
    assert result.status == Status.SUCCESS, result.summary_text
    return root


@pytest.fixture()
def site(first_night, tmp_path):
    """A copy of the first night's folder that a test may damage."""
    root = tmp_path / "site"
    shutil.copytree(first_night, root, symlinks=True)
    return root


def record_folders(content):
    return sorted(p for p in content.iterdir() if p.is_dir() and p.name.startswith("PPN"))


def artifact_times(artifacts):
    return {p.name: p.stat().st_mtime_ns for p in artifacts.iterdir() if p.is_file() and p.suffix in (".h5", ".hdf5")}


def test_hiding_half_the_record_folders_stops_the_night_before_any_write(site, monkeypatch):
    content, artifacts = site / "content", site / "artifacts"
    folders = record_folders(content)
    hidden = folders[: len(folders) // 2]
    previous = collection.load_inventory(artifacts / "inventory.h5")
    hidden_images = sum(f.relpath.split("/")[0] in {h.name for h in hidden} for f in previous.files)
    (site / "unmounted").mkdir()
    for folder in hidden:  # an unmounted sub-volume, a failed sync
        folder.rename(site / "unmounted" / folder.name)
    cms_before, times_before = cms_rows(site / "cms.sqlite"), artifact_times(artifacts)

    result = night(monkeypatch, site, SECOND)

    assert result.status == Status.MISSING_EXT, result.summary_text
    assert cms_rows(site / "cms.sqlite") == cms_before  # the CMS untouched
    assert artifact_times(artifacts) == times_before  # no artifact written
    report = json.loads((artifacts / "runs" / SECOND.isoformat() / "run_report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "CollectionOnDisk"
    assert f"{hidden_images} of the previous run's" in report["error"]
    assert f"{len(hidden)} record folders are gone or empty" in report["error"]
    assert all(folder.name in report["error"] for folder in hidden)
    assert "--collection-allow-removals" in report["error"]

    # a site that removed them on purpose confirms it for one run
    result = night(monkeypatch, site, SECOND, collection__allow_removals="true")
    assert result.status == Status.SUCCESS, result.summary_text
    kept = {int(i) for i in read_similarities(artifacts / "similarities.hdf5")["ids"]}
    with sqlite3.connect(site / "cms.sqlite") as db:
        assert {i for (i,) in db.execute("SELECT DISTINCT image_id FROM image_similarity")} == kept
    assert json.loads((artifacts / "run_report.json").read_text())["removed"] == hidden_images


def test_a_few_removed_images_and_an_emptied_mount_point(site, monkeypatch):
    content = site / "content"
    folders = record_folders(content)
    (folders[0] / sorted(os.listdir(folders[0]))[0]).unlink()  # one image withdrawn: under max_removed
    assert night(monkeypatch, site, SECOND, collection__max_removed=0.1).status == Status.SUCCESS
    for path in folders[1].iterdir():  # the mount point of an unmounted volume stays, empty
        path.unlink()
    result = night(monkeypatch, site, SECOND + datetime.timedelta(days=1))  # 1 of 17 is more than 5 %
    assert result.status == Status.MISSING_EXT, result.summary_text
    report = json.loads((site / "artifacts" / "runs" / "2026-05-03" / "run_report.json").read_text())
    assert f"1 record folder is gone or empty ({folders[1].name})" in report["error"]


def test_the_folders_gone_are_counted_and_an_unlistable_one_is_not(tmp_path, monkeypatch):
    files = [collection.ImageFile(p, f"{n}.jpg", 1, 1, "") for p in ("1", "2", "3") for n in range(3)]
    previous = collection.Inventory(ids=np.arange(9), files=files, unmapped=[], missing=[])
    content = tmp_path / "content"
    for ppn in ("1", "3"):
        (content / f"PPN{ppn}").mkdir(parents=True)
    (content / "PPN1" / "0.jpg").write_bytes(b"x")
    (content / "PPN1" / "1.jpg").write_bytes(b"x")
    scandir = os.scandir

    def refusing(path):
        if os.path.basename(path) == "PPN3":
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    gone, emptied = collection.gone_from_disk(previous, str(content))
    assert gone == {"PPN1": 1, "PPN2": 3} and emptied == ["PPN2"]  # PPN3 cannot be listed: its files may be there
