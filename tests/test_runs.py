"""A run of the small collection: its output, what a rerun or a changed setting redoes, shards and compare."""

import json
import logging

import h5py
import luigi
import numpy as np
import pytest

from pipeline.collection import load_inventory
from pipeline.h5io import read_attrs
from pipeline.model import RANDOM_WEIGHTS_NOTE
from pipeline.output import read_similarities
from tasks import (
    Codebook,
    Features,
    Histograms,
    Nightly,
    Reducer,
    Similarities,
)

from .conftest import luigi_config, pipeline_config
from .runs import ARTIFACTS, OwnRun, build, mtimes, nightly_equals, own_run, run  # noqa: F401 (fixtures)


def test_output_follows_the_contract(run):
    root, groups = run
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
    root, groups = run
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    group_of = {i: name for name, members in groups.items() for i in members}
    first_hits = np.mean([group_of[n[0]] == group_of[i] for i, n in zip(result["ids"], result["neighbours"])])
    chance = 2 / (len(result["ids"]) - 1)
    assert first_hits >= 4 * chance, f"first neighbour in the same group for {first_hits:.0%} of the images"


def test_unmapped_files_and_rows_without_files_are_listed(run):
    root, _ = run
    inventory = load_inventory(root / "artifacts" / "inventory.h5")
    assert len(inventory.unmapped) == 1 and inventory.unmapped[0].endswith(".jpg")
    assert len(inventory.missing) == 1 and "99999999.jpg" in inventory.missing[0]


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
    with pytest.MonkeyPatch.context() as patch, luigi_config(monkeypatch, root / "luigi.cfg"):
        patch.setattr("tasks.fitting.DESCRIPTORS_PER_WORD", 5)  # what a new release of auto does
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
        assert Reducer().complete() and not Codebook().complete()
        assert Similarities().complete()  # made from a codebook of the identity the new one will have
    assert build(monkeypatch, root / "luigi.cfg", Codebook).status == luigi.execution_summary.LuigiStatusCode.SUCCESS
    with luigi_config(monkeypatch, root / "luigi.cfg"):
        # the same inputs and settings give the same codebook: what follows is valid again
        assert Codebook().complete() and Similarities().complete()


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
    """Another run, from nothing, with every stage sharded: the same lists as the shared run's
    (the same input and settings give the same result, however the work is split)."""
    first, _ = run
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


def test_compare_prints_the_grid_best_first_reusing_the_features(run, monkeypatch, capsys, caplog, tmp_path):
    root, groups = run
    own = OwnRun(root, tmp_path / "run")  # compare adds a feature store: to a copy of the shared run
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{name}\n" for name, members in groups.items() for i in members))
    rows = tmp_path / "rows.json"
    from tasks import compare  # the command's own main, in this process (on the stand-in model)

    caplog.set_level(logging.INFO)
    monkeypatch.chdir(own.root)
    with luigi_config(monkeypatch, own.config()):
        argv = ["--sizes", "8,auto", "--trims", "true,false", "--labels", str(labels), "--selfcheck", "3"]
        assert compare.main([*argv, "--json", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "extracting 0 images, reusing 18" in caplog.text  # the run's feature store (trim = true)
    assert "extracting 18 images, reusing 0" in caplog.text  # another for trim = false
    lines = out.strip().splitlines()
    assert lines[0] == "18 images, weights random; best first"
    assert lines[1].startswith(
        "| layer | colour | trim | descriptors | reduced | K | assign | weighting | power | metric | rerank | mAP | P@1 | P@5 | R@5 | self-check top-1 |"
    )
    assert len(lines) == 3 + 2 * 2 * 2 * 2
    saved = json.loads(rows.read_text())["rows"]
    assert [r["map"] for r in saved] == sorted((r["map"] for r in saved), reverse=True)
    assert {r["codebook"] for r in saved} == {"8", "110 (auto)"} and {r["trim"] for r in saved} == {True, False}
    assert all(r["queries"] == 18 and 0 <= r["selfcheck_top1"] <= 1 for r in saved)
    # the lists re-ranked, beside the same settings' lists by distance
    with luigi_config(monkeypatch, own.config()):
        argv = [
            "--sizes",
            "8",
            "--weightings",
            "tfidf",
            "--metrics",
            "cosine",
            "--selfcheck",
            "3",
            "--rerank",
            "on,off",
        ]
        assert compare.main([*argv, "--labels", str(labels), "--json", str(rows)]) == 0
    saved = json.loads(rows.read_text())["rows"]
    assert sorted(r["rerank"] for r in saved) == ["off", "on"] and all(r["queries"] == 18 for r in saved)
