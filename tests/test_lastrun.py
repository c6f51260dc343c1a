"""The previous run's results kept as the next run's input."""

import os

import h5py

from pipeline.lastrun import keep_previous


def artifact(path, run_date):
    with h5py.File(path, "w") as f:
        f.attrs["run_date"] = run_date
        f["ids"] = [1, 2, 3]


def test_the_previous_runs_files_are_linked_and_earlier_runs_folders_removed(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    (artifacts / "runs" / "2026-01-01" / "previous").mkdir(parents=True)  # an earlier night's
    artifact(artifacts / "histograms.h5", "2026-01-01")
    artifact(artifacts / "similarities.hdf5", "2026-01-02")  # made by this run already
    (artifacts / "copies.h5").write_bytes(b"damaged")  # the stage that reads it says so
    folder = artifacts / "runs" / "2026-01-02" / "previous"
    names = ("inventory.h5", "histograms.h5", "similarities.hdf5", "copies.h5")
    assert keep_previous(str(artifacts), str(folder), names, "2026-01-02") == ["histograms.h5", "copies.h5"]
    assert sorted(os.listdir(folder)) == ["copies.h5", "histograms.h5"]
    assert os.path.samefile(folder / "histograms.h5", artifacts / "histograms.h5")  # a link: no copy
    artifact(tmp_path / "new.h5", "2026-01-02")
    os.replace(tmp_path / "new.h5", artifacts / "histograms.h5")  # the run replaces it, as every write does
    with h5py.File(folder / "histograms.h5") as f:
        assert f.attrs["run_date"] == "2026-01-01"
    assert not (artifacts / "runs" / "2026-01-01" / "previous").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["previous"]  # no temporary left

    def refused(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)  # a storage without hard links: a copy
    later = artifacts / "runs" / "2026-01-03" / "previous"
    assert keep_previous(str(artifacts), str(later), names, "2026-01-03") == list(names[1:])
    assert not os.path.samefile(later / "histograms.h5", artifacts / "histograms.h5")
    assert not folder.exists()
