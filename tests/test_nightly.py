"""Nightly runs in real processes: kills, resumes, incremental changes, the run lock."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.output import read_similarities
from pipeline.store import FeatureStore
from tasks import Codebook, Features, Histograms, Inventory, Nightly, Reducer, Similarities

from .conftest import luigi_config, pipeline_config, small_disk

#: Real processes and several full runs each: the full tier (make test-all, .ci/run).
pytestmark = pytest.mark.slow

LUIGI = os.path.join(os.path.dirname(sys.executable), "luigi")
RESULT = ("ids", "neighbours", "distances", "ppn", "filename", "similarities")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(date, *extra):
    """The nightly command, through tests.faults: the pipeline's tasks with a tiny stand-in
    model and the faults ``environment`` names."""
    return [LUIGI, "--module", "tests.faults", "Nightly", "--local-scheduler", "--date", date, *extra]


def environment(root, **faults):
    """The command's environment: the run's config, the tiny model, and faults such as
    ``FAULT_KILL_AT="Codebook"`` (see tests/faults.py)."""
    return {
        **os.environ,
        "LUIGI_CONFIG_PATH": str(root / "luigi.cfg"),
        "PYTHONPATH": ROOT,
        "FAULT_TINY_MODEL": "1",
        **faults,
    }


def nightly(root, date="2026-01-01", *extra, **faults):
    done = subprocess.run(
        command(date, *extra), cwd=root, env=environment(root, **faults), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def nightly_killed_at(root, stage, date="2026-01-01"):
    """Run until ``stage`` starts (``Stage``) or has done N (``Stage:N``), where the run kills
    itself with SIGKILL; return its log."""
    done = subprocess.run(
        command(date), cwd=root, env=environment(root, FAULT_KILL_AT=stage), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == -signal.SIGKILL, f"the run ended before {stage}:\n{done.stderr[-2000:]}"
    return done.stderr


def report(root):
    return json.loads((root / "artifacts" / "run_report.json").read_text())


def project(root, content, **overrides):
    """A run folder whose config reads ``content`` and writes its own artifacts (with ``overrides``,
    as :func:`pipeline_config` takes them)."""
    root.mkdir(parents=True, exist_ok=True)
    config = pipeline_config(root, **overrides)
    text = config.read_text().replace(str(root / "content"), str(content))
    logging_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "logging.cfg")
    config.write_text(text + f"[core]\nlock_pid_dir = {root / 'locks'}\nlogging_conf_file = {logging_cfg}\n")
    return root


def committed_keys(root):
    stores = list((root / "artifacts" / "features").glob("*"))
    return set(FeatureStore(str(stores[0])).scan()[0]) if stores else set()


@pytest.fixture(scope="module")
def reference(small_collection, tmp_path_factory):
    content, _ = small_collection
    root = project(tmp_path_factory.mktemp("reference"), content)
    nightly(root)
    return read_similarities(root / "artifacts" / "similarities.hdf5")


@pytest.mark.parametrize(
    "stage",
    ["FeatureShard:8", "Codebook", "Similarities"],
    ids=["during-extraction", "during-codebook-fit", "while-writing-output"],
)
def test_killed_run_resumes_to_the_same_result(small_collection, reference, tmp_path, stage):
    content, _ = small_collection
    root = project(tmp_path, content)
    nightly_killed_at(root, stage)
    assert not (root / "artifacts" / "similarities.hdf5").exists()
    committed = committed_keys(root)

    # the killed run's claim on the folder does not block the next: the next night's (another date), or a rerun
    log = nightly(root, "2026-01-02" if stage.startswith("FeatureShard") else "2026-01-01")
    if stage.startswith("FeatureShard"):
        assert 8 <= len(committed) < 18
        assert f"extracting {18 - len(committed)} images, reusing {len(committed)}" in log
    else:
        assert len(committed) == 18 and "extracting" not in log  # extraction was complete and is not redone
    resumed = read_similarities(root / "artifacts" / "similarities.hdf5")
    for key in RESULT:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    assert report(root)["status"] == "ok"
    assert not list((root / "artifacts").rglob("*.tmp"))


def test_leftover_temporary_files_make_no_task_complete(tmp_path, monkeypatch, small_collection):
    root = project(tmp_path, small_collection[0])
    artifacts = root / "artifacts"
    artifacts.mkdir()
    for name in ("inventory.h5", "features.h5", "reducer.h5", "codebook.h5", "histograms.h5", "similarities.hdf5"):
        (artifacts / f".{name}.x1y2.tmp").write_bytes(b"\x89HDF\r\n\x1a\n half written")
        (artifacts / f"{name}-luigi-tmp-0000000001").write_bytes(b"half written")
    with luigi_config(monkeypatch, root / "luigi.cfg"):
        for task in (Inventory, Features, Reducer, Codebook, Histograms, Similarities, Nightly):
            assert not task().complete(), task.__name__


def add_image(content, ppn_dir, name, source, image_id, rows):
    with Image.open(source) as image:
        image.rotate(90, expand=True).save(content / ppn_dir / name, "JPEG", quality=85)
    rows.append(f"{image_id},{ppn_dir},{name}")


def test_incremental_nightly_runs(tmp_path, small_collection):
    from pipeline.demo import make_collection

    from .conftest import SMALL_BASES

    content = tmp_path / "content"
    groups = make_collection(content, bases=SMALL_BASES)
    root = project(tmp_path / "run", content)
    nightly(root, "2026-01-01")
    first = report(root)
    assert (first["images_total"], first["extracted"], first["reused"], first["removed"]) == (18, 18, 0, 0)
    assert first["refit"] is True and first["status"] == "ok"
    searched = dict(first["neighbours"])
    share = searched.pop("own_record_share")  # neighbours from the image's own record
    assert searched == {"search": "full", "queried": 18, "same_record": "keep"} and 0 <= share <= 1
    stages = {
        "Inventory",
        "FeatureShard",
        "Features",
        "Reducer",
        "Codebook",
        "HistogramShard",
        "Histograms",
        "Verdicts",
        "NeighbourShard",
        "Similarities",
        "MapLayout",
        "Map",
    }
    assert set(first["stage_seconds"]) == stages and first["stage_seconds"]["FeatureShard"] > 0

    # a second call for the same date does nothing
    again = subprocess.run(command("2026-01-01"), cwd=root, env=environment(root), capture_output=True, text=True)
    assert again.returncode == 0 and "Did not run any tasks" in again.stderr

    mapping = (content / "image_ids.csv").read_text().splitlines()
    header, rows = mapping[0], mapping[1:]
    by_id = {int(r.split(",")[0]): r.split(",") for r in rows}
    deleted_id, changed_id = groups["coffee"][0], groups["page"][0]
    _, ppn, name = by_id[deleted_id]
    os.remove(content / ppn / name)
    _, ppn, name = by_id[changed_id]
    with Image.open(content / ppn / name) as image:
        image.convert("L").convert("RGB").save(content / ppn / name, "JPEG", quality=70)
    _, ppn, name = by_id[groups["astronaut"][0]]
    add_image(content, ppn, "new-1.jpg", content / ppn / name, 5001, rows)
    add_image(content, ppn, "new-2.jpg", content / ppn / name, 5002, rows)
    (content / "image_ids.csv").write_text("\n".join([header, *rows]) + "\n")

    log = nightly(root, "2026-01-02")
    second = report(root)
    assert (second["images_total"], second["extracted"], second["reused"], second["removed"]) == (19, 3, 16, 1)
    assert second["refit"] is False
    assert second["neighbours"]["search"] == "incremental" and 3 <= second["neighbours"]["queried"] < 19
    assert "extracting 3 images, reusing 16" in log
    assert "3 computed, 16 reused" in log  # histograms of unchanged images kept
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    assert deleted_id not in result["ids"] and deleted_id not in result["neighbours"]
    assert {5001, 5002, changed_id} <= set(result["ids"].tolist())
    assert len(result["ids"]) == 19
    assert json.loads((root / "artifacts" / "runs" / "2026-01-01" / "run_report.json").read_text()) == first

    # a refit asked for recomputes every histogram
    log = nightly(root, "2026-01-03", "--refit")
    third = report(root)
    assert third["refit"] is True and third["extracted"] == 0 and "19 computed, 0 reused" in log
    assert third["neighbours"]["search"] == "full"

    # --full searches every image again, without a refit
    log = nightly(root, "2026-01-04", "--full")
    fourth = report(root)
    assert fourth["refit"] is False and fourth["neighbours"]["search"] == "full"
    assert fourth["neighbours"]["queried"] == 19
    assert "every image's neighbours are found again (--full)" in log


def test_growth_past_the_threshold_refits(tmp_path, small_collection):
    content = tmp_path / "content"
    shutil.copytree(small_collection[0], content, symlinks=True)
    root = project(tmp_path / "run", content)
    with open(root / "luigi.cfg", "a") as f:
        f.write("[codebook]\nrefit_growth = 0.04\n")
    nightly(root, "2026-01-01")
    rows = (content / "image_ids.csv").read_text().splitlines()
    ppn_dir = sorted(p.name for p in content.iterdir() if p.is_dir())[0]
    source = sorted((content / ppn_dir).iterdir())[0]
    add_image(content, ppn_dir, "grown.jpg", source, 6001, rows)
    (content / "image_ids.csv").write_text("\n".join(rows) + "\n")
    log = nightly(root, "2026-01-02")
    assert report(root)["refit"] is True  # 19 images are 5.6 % more than the 18 of the fit
    assert "19 computed, 0 reused" in log


def test_a_second_run_at_the_same_time_stops_at_once_whatever_its_date(tmp_path, small_collection):
    root = project(tmp_path, small_collection[0])
    release = root / "release"
    first = subprocess.Popen(
        command("2026-01-01"),
        cwd=root,
        env=environment(root, FAULT_PAUSE_AT=f"Features:{release}"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (root / "release.paused").exists():  # the first run holds the folder, in the middle of its work
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    # as an overlapping cron job starts them: the next night's run, and the same command again
    second = subprocess.run(
        command("2026-01-02"), cwd=root, env=environment(root), capture_output=True, text=True, timeout=120
    )
    third = subprocess.run(
        command("2026-01-01"), cwd=root, env=environment(root), capture_output=True, text=True, timeout=120
    )
    release.touch()
    rest = first.stderr.read()
    assert first.wait(timeout=300) == 0, rest[-2000:]
    assert second.returncode == 10 and third.returncode == 10, second.stderr[-2000:] + third.stderr[-2000:]
    holder = f"the run of 2026-01-01, since {report(root)['started'][:11]}"
    assert f"error: another run holds the artifacts folder {root / 'artifacts'}: " in second.stderr
    assert (
        holder in second.stderr and f"pid {first.pid}; the run of 2026-01-02 stops without touching it" in second.stderr
    )
    assert "running" not in second.stderr  # no task was scheduled
    assert report(root)["status"] == "ok" and report(root)["date"] == "2026-01-01"
    assert not (root / "artifacts" / "runs" / "2026-01-02").exists()
    assert not (root / "artifacts" / "run.lock").exists()  # the run that held it removed its claim when it ended


def snapshot(artifacts, leave_out=("filler", "inventory.h5", "run_report.json", "runs")):
    """SHA-256 of every file under ``artifacts`` except those a failed run may rewrite."""
    found = {}
    for path in sorted(artifacts.rglob("*")):
        relative = path.relative_to(artifacts)
        if path.is_file() and relative.parts[0] not in leave_out:
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_a_full_or_read_only_artifacts_disk_fails_the_run_cleanly(small_collection, tmp_path, failure):
    # the real ResNet50: its chunks (about 80 KB an image) are what fills a disk
    real = {"FAULT_TINY_MODEL": "0"}
    content = tmp_path / "content"
    shutil.copytree(small_collection[0], content, symlinks=True)
    root = project(tmp_path / "run", content)
    artifacts = root / "artifacts"
    with small_disk(artifacts):
        nightly(root, "2026-01-01", **real)
        before = snapshot(artifacts)
        rows = []
        folder = sorted(p.name for p in content.iterdir() if p.is_dir())[0]
        add_image(content, folder, "new.jpg", sorted((content / folder).iterdir())[0], 777, rows)
        with open(content / "image_ids.csv", "a") as f:
            f.write("\n".join(rows) + "\n")
        if failure == "full":  # room for the new inventory, not for the new image's descriptors
            free = os.statvfs(artifacts).f_bavail * os.statvfs(artifacts).f_frsize
            room = (artifacts / "inventory.h5").stat().st_size + 40_000
            (artifacts / "filler").write_bytes(bytes(free - room))
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(artifacts)], check=True)

        done = subprocess.run(
            command("2026-01-02"), cwd=root, env=environment(root, **real), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 30, done.stderr[-3000:]
        reason = "No space left on device" if failure == "full" else "Read-only file system"
        expected = (
            f"cannot write under [paths] artifacts='{artifacts}': {reason}; the earlier artifacts are as they were"
        )
        assert expected in done.stderr
        assert snapshot(artifacts) == before  # nothing of the first run changed, nothing half-written left
        assert not list(artifacts.rglob("*.tmp"))
        latest = report(root)
        if failure == "full":
            assert (latest["status"], latest["failed_stage"]) == ("failed", "FeatureShard")
            assert latest["error"].startswith(f"ArtifactError: {expected}")
            (artifacts / "filler").unlink()
        else:
            assert latest["status"] == "ok" and "report could not be written (Read-only file system)" in done.stderr
            subprocess.run(["mount", "-o", "remount,rw", str(artifacts)], check=True)

        log = nightly(root, "2026-01-02", **real)  # with room again, the run completes
        assert "extracting 1 images, reusing 18" in log
        result = read_similarities(artifacts / "similarities.hdf5")
        assert 777 in result["ids"].tolist() and report(root)["status"] == "ok"
