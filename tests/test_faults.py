"""Storage faults between two nights: a half-missing collection stops the night before any write;
damaged artifacts are repaired (with a warning) and give the lists of a clean run.

Every run here uses the tiny stand-in model (``tests.faults.TinyBackend``): the faults are
about the artifacts, not about ResNet50."""

import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import luigi
import numpy as np
import pytest

from pipeline import collection, store
from pipeline.output import read_similarities
from tasks import Nightly

from .conftest import environment_lacks, luigi_config, pipeline_config
from .runs import cms_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST, SECOND = datetime.date(2026, 5, 1), datetime.date(2026, 5, 2)
Status = luigi.execution_summary.LuigiStatusCode


def night(monkeypatch, root, date, **overrides):
    """Nightly of ``date`` under ``root`` (its content, artifacts and SQLite CMS) with the tiny model."""
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
    shutil.copytree(first_night, root, symlinks=True, ignore=shutil.ignore_patterns("run.lock*"))  # this process's
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


def test_with_its_inventory_damaged_the_previous_run_is_read_from_its_features_index(site, monkeypatch):
    content, artifacts = site / "content", site / "artifacts"
    hidden = record_folders(content)[:2]
    listed = [collection.relpath_of(key) for key in store.load_index(artifacts / "features.h5").keys]
    images = sum(relpath.split("/")[0] in {h.name for h in hidden} for relpath in listed)  # with descriptors
    with open(artifacts / "inventory.h5", "r+b") as f:  # the same failing storage: truncated
        f.truncate(100)
    (site / "unmounted").mkdir()
    for folder in hidden:
        folder.rename(site / "unmounted" / folder.name)
    result = night(monkeypatch, site, SECOND)
    assert result.status == Status.MISSING_EXT, result.summary_text
    report = json.loads((artifacts / "runs" / SECOND.isoformat() / "run_report.json").read_text())
    assert f"{images} of the previous run's" in report["error"] and hidden[0].name in report["error"]


def test_a_mapping_that_loses_half_its_rows_stops_the_night_before_the_inventory_is_written(site, monkeypatch):
    artifacts, mapping = site / "artifacts", site / "content" / "image_ids.csv"
    rows = mapping.read_text().splitlines()
    mapping.write_text("\n".join(rows[: 1 + (len(rows) - 1) // 2]) + "\n")  # a truncated export
    cms_before, times_before = cms_rows(site / "cms.sqlite"), artifact_times(artifacts)

    result = night(monkeypatch, site, SECOND)

    assert result.status == Status.FAILED, result.summary_text
    assert cms_rows(site / "cms.sqlite") == cms_before and artifact_times(artifacts) == times_before
    report = json.loads((artifacts / "runs" / SECOND.isoformat() / "run_report.json").read_text())
    assert report["failed_stage"] == "Inventory" and "on disk but no longer in the ID mapping" in report["error"]
    assert "--collection-allow-removals" in report["error"]
    result = night(monkeypatch, site, SECOND, collection__allow_removals="true")  # withdrawn on purpose
    assert result.status == Status.SUCCESS, result.summary_text
    assert json.loads((artifacts / "run_report.json").read_text())["removed"] > 0


def test_with_its_inventory_damaged_a_mapping_that_loses_half_its_rows_still_stops_the_night(site, monkeypatch):
    artifacts, mapping = site / "artifacts", site / "content" / "image_ids.csv"
    with open(artifacts / "inventory.h5", "r+b") as f:  # truncated: the guard reads the features index
        f.truncate(100)
    rows = mapping.read_text().splitlines()
    mapping.write_text("\n".join(rows[: 1 + (len(rows) - 1) // 2]) + "\n")
    cms_before = cms_rows(site / "cms.sqlite")

    result = night(monkeypatch, site, SECOND)

    assert result.status == Status.FAILED, result.summary_text
    assert cms_rows(site / "cms.sqlite") == cms_before
    report = json.loads((artifacts / "runs" / SECOND.isoformat() / "run_report.json").read_text())
    assert report["failed_stage"] == "Inventory" and "on disk but no longer in the ID mapping" in report["error"]


def test_a_few_removed_images_and_an_emptied_mount_point(site, monkeypatch):
    content = site / "content"
    folders = sorted(record_folders(content), key=lambda f: len(os.listdir(f)))
    (folders[0] / sorted(os.listdir(folders[0]))[0]).unlink()  # one image of 18 withdrawn: 5 %, rounded up
    assert night(monkeypatch, site, SECOND).status == Status.SUCCESS
    assert json.loads((site / "artifacts" / "run_report.json").read_text())["removed"] == 1
    for path in folders[-1].iterdir():  # the mount point of an unmounted volume stays, empty
        path.unlink()
    result = night(monkeypatch, site, SECOND + datetime.timedelta(days=1))
    assert result.status == Status.MISSING_EXT, result.summary_text
    report = json.loads((site / "artifacts" / "runs" / "2026-05-03" / "run_report.json").read_text())
    assert f"1 record folder is gone or empty ({folders[-1].name})" in report["error"]


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
    gone, emptied = collection.gone_from_disk([f.relpath for f in previous.files], str(content))
    assert gone == {"PPN1": 1, "PPN2": 3} and emptied == ["PPN2"]  # PPN3 cannot be listed: its files may be there


#: Each artifact of a finished night, by the name the matrix gives it: a path under artifacts/ (a glob).
ARTIFACT_PATHS = {
    "inventory": "inventory.h5",
    "store catalog": "features/*/catalog.h5",
    "chunk": "features/*/chunks/*.h5",
    "features": "features.h5",
    "reducer": "reducer.h5",
    "codebook": "codebook.h5",
    "feature shard": "shards/features-*.h5",
    "histogram shard": "shards/histograms-*.h5",
    "neighbour shard": "shards/neighbours-*.h5",
    "histograms": "histograms.h5",
    "similarities": "similarities.hdf5",
    "run lock": "run.lock",
    "report": "run_report.json",
}
FAULTS = ("truncated", "zeroed", "deleted", "unreadable")
#: What the run report's ``repaired`` must say of the artifact made again (None: nothing to say).
SAID = {
    "chunk": "damaged or missing feature chunks: their",
    "reducer": "reducer.h5 is unreadable",
    "codebook": "codebook.h5 is unreadable",
    "features": "features.h5 is unreadable",
    "histograms": "histograms.h5 is unreadable",
    "similarities": "similarities.hdf5 is unreadable",
}
#: The cases of the default tier; the rest are marked slow (.ci/run runs them all).
QUICK = {("chunk", "truncated"), ("chunk", "unreadable"), ("codebook", "truncated"), ("similarities", "zeroed")}


def damage(path, fault):
    """Leave ``path`` as a fault leaves it."""
    if fault == "deleted":
        path.unlink()
        return
    data = path.read_bytes()
    if fault == "truncated":  # an interrupted copy, a full disk on another host
        path.write_bytes(data[: len(data) // 2])
    elif fault == "zeroed":  # a filesystem fault: the right size, nothing in it
        path.write_bytes(bytes(len(data)))
    else:  # unreadable: no permission (the night runs without root's override, see unprivileged_night)
        path.chmod(0)


def unprivileged_night(root, date):
    """The ``luigi`` command's Nightly of ``date`` under ``root`` with the tiny model, in a process
    without root's right to read any file (so that a file's permissions count, as for a site's
    user): its exit code and output."""
    if shutil.which("setpriv") is None:
        environment_lacks("setpriv (util-linux) is not installed")
    caps = "-dac_override,-dac_read_search"
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(root / "luigi.cfg"), "FAULT_TINY_MODEL": "1", "PYTHONPATH": REPO}
    luigi_bin = os.path.join(os.path.dirname(sys.executable), "luigi")
    command = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", luigi_bin, "--module", "tests.faults"]
    command += ["Nightly", "--date", date.isoformat(), "--local-scheduler", "--no-lock"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def clean_second_night(first_night, tmp_path_factory):
    """The lists of the second night of an undamaged copy of the first night's folder."""
    root = tmp_path_factory.mktemp("clean") / "site"
    shutil.copytree(first_night, root, symlinks=True, ignore=shutil.ignore_patterns("run.lock*"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = night(monkeypatch, root, SECOND)
    assert result.status == Status.SUCCESS, result.summary_text
    return read_similarities(root / "artifacts" / "similarities.hdf5")


def matrix():
    for artifact in ARTIFACT_PATHS:
        for fault in FAULTS:
            marks = () if (artifact, fault) in QUICK else (pytest.mark.slow,)
            yield pytest.param(artifact, fault, marks=marks, id=f"{artifact}-{fault}")


@pytest.mark.parametrize("artifact, fault", list(matrix()))
def test_the_night_after_a_damaged_artifact_gives_the_lists_of_a_clean_night(
    site, clean_second_night, monkeypatch, artifact, fault
):
    artifacts = site / "artifacts"
    if artifact == "run lock":  # a claim a killed run left: what is left of it is damaged
        (artifacts / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "date": "2026-04-30"}))
    path = sorted(artifacts.glob(ARTIFACT_PATHS[artifact]))[0]
    damage(path, fault)
    if fault == "unreadable":
        pipeline_config(site, cms__url=f"sqlite:///{site / 'cms.sqlite'}")
        code, output = unprivileged_night(site, SECOND)
        assert code == 0, output[-3000:]
    else:
        result = night(monkeypatch, site, SECOND)
        assert result.status == Status.SUCCESS, result.summary_text
    lists = read_similarities(artifacts / "similarities.hdf5")
    for key, expected in clean_second_night.items():
        # without an earlier similarities.hdf5, nothing is told changed (and every list is loaded)
        if isinstance(expected, np.ndarray) and not (artifact == "similarities" and key in ("changed", "removed")):
            np.testing.assert_array_equal(lists[key], expected, err_msg=key)
    report = json.loads((artifacts / "run_report.json").read_text())
    assert report["status"] == "ok"
    said = SAID.get(artifact)
    if said and (fault != "deleted" or artifact in ("chunk", "reducer", "codebook")):
        if fault == "deleted" and artifact != "chunk":
            said = said.replace("unreadable", "missing")
        assert any(said in note for note in report["repaired"]), report["repaired"]
    if artifact in ("reducer", "codebook"):
        assert any("every list may change" in note for note in report["repaired"])
    assert cms_rows(site / "cms.sqlite")  # loaded


def test_a_codebook_lost_after_the_collection_grew_is_refitted_with_its_reducer(site, monkeypatch):
    """Found by the soak (seed 0, night 4): a codebook fitted again on a grown collection has other
    words (and, at size auto, another number of them) under the identity of the lost one, so the
    last night's histograms were reused with it."""
    from pipeline.h5io import read_attrs

    from .runs import change_collection

    change_collection(site / "content", np.random.default_rng(5), SECOND.isoformat())  # one image more
    codebook = site / "artifacts" / "codebook.h5"
    size_before = read_attrs(codebook)["size"]
    codebook.write_bytes(np.random.default_rng(0).bytes(codebook.stat().st_size))
    result = night(monkeypatch, site, SECOND)
    assert result.status == Status.SUCCESS, result.summary_text
    artifacts = site / "artifacts"
    assert read_attrs(artifacts / "reducer.h5")["run_date"] == SECOND.isoformat()  # refitted with it
    size = read_attrs(codebook)["size"]
    assert size != size_before and read_attrs(artifacts / "histograms.h5")["size"] == size
    assert read_attrs(artifacts / "histograms.h5")["reused"] == 0


def flip_a_byte(path, keep_time):
    """Flip one byte inside the descriptors of the chunk at ``path``; with ``keep_time``, as bit rot
    does it (the file's size and times unchanged)."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f["codes"].id.get_chunk_info(0).byte_offset  # the first image's codes
    times = os.stat(path)
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0x40
    path.write_bytes(bytes(data))
    if keep_time:
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_a_flipped_byte_in_a_chunk_is_found_by_its_checksum_and_repaired(site, monkeypatch, tmp_path):
    chunks = sorted((site / "artifacts").glob(ARTIFACT_PATHS["chunk"]))
    flip_a_byte(chunks[0], keep_time=False)  # a write: the night's stat of the chunk finds it
    result = night(monkeypatch, site, SECOND)
    assert result.status == Status.SUCCESS, result.summary_text
    report = json.loads((site / "artifacts" / "run_report.json").read_text())
    assert any("1 damaged or missing feature chunks" in note for note in report["repaired"])

    # bit rot under an unchanged file: found as the chunk is read (here by a refit's sample)
    chunks = sorted((site / "artifacts").glob(ARTIFACT_PATHS["chunk"]))
    flip_a_byte(chunks[0], keep_time=True)
    later = SECOND + datetime.timedelta(days=1)
    config = pipeline_config(site, cms__url=f"sqlite:///{site / 'cms.sqlite'}")
    with luigi_config(monkeypatch, config):
        failed = luigi.build([Nightly(date=later, refit=True)], local_scheduler=True, detailed_summary=True)
    report = json.loads((site / "artifacts" / "runs" / later.isoformat() / "run_report.json").read_text())
    assert failed.status == Status.FAILED, failed.summary_text
    assert "DamagedChunk" in report["error"] and "set aside" in report["error"]
    with luigi_config(monkeypatch, config):  # the same night again: the chunk's images extracted anew
        result = luigi.build([Nightly(date=later, refit=True)], local_scheduler=True, detailed_summary=True)
    assert result.status == Status.SUCCESS, result.summary_text
    report = json.loads((site / "artifacts" / "run_report.json").read_text())
    assert any("1 damaged or missing feature chunks" in note for note in report["repaired"])
    assert not list((site / "artifacts").glob("features/*/damaged/*"))  # cleared once extracted again
