"""precision = int8: the calibrated trunk, its place in the feature store, and a run with it.

A tiny stand-in model is quantized here (seconds); the speed and quality of int8 ResNet50 are
the benchmarks' (``python -m benchmarks.extract --precision int8``, docs/quality.md)."""

import os

import luigi
import numpy as np
import pytest

from pipeline import backends, int8
from pipeline.backends import ModelSpec
from pipeline.errors import ArtifactError
from pipeline.features import DescriptorExtractor, extract
from pipeline.h5io import read_attrs
from pipeline.images import load_image
from pipeline.precision import candidates, stated
from pipeline.query import SimilarityIndex
from pipeline.store import FeatureStore
from tasks import Features, Similarities, compare
from tasks.checks import query_extractor
from tasks.extraction import feature_settings

from .conftest import luigi_config, pipeline_config
from .faults import tiny_model

TRUNK = int8.TRUNK_FILE


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """OpenVINO's telemetry decision is written under $HOME: a home of the test's own."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pixels(small_collection):
    content, _ = small_collection
    paths = sorted(str(p) for p in content.glob("PPN*/*.jpg"))[:16]
    return np.stack([load_image(p) for p in paths]).astype(np.float32), paths


@pytest.fixture(scope="module")
def trunk(model, pixels, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("trunk") / int8.TRUNK_FILE)
    killed = os.path.join(os.path.dirname(path), f".{int8.TRUNK_FILE}.99999.tmp")  # a killed calibration's
    os.makedirs(killed)
    open(os.path.join(killed, int8.TRUNK_FILE), "w").close()
    int8.calibrate(model, pixels[0], path)
    return path


def test_the_trunk_is_written_whole_and_gives_the_float32_maps_to_within_int8(model, pixels, trunk):
    folder = os.path.dirname(trunk)
    assert sorted(os.listdir(folder)) == ["int8-trunk.bin", "int8-trunk.xml"]  # no temporary left, nor a killed one's
    paths = pixels[1][:4]
    with DescriptorExtractor(model, batch_size=4) as extractor:
        full = extract(extractor, paths)[0]
    with DescriptorExtractor(int8.load_trunk(trunk), batch_size=4) as extractor:
        quantized, decoded, errors = extract(extractor, paths)
    assert quantized.dtype == np.float32 and quantized.shape == full.shape == (4, 49, 64)
    assert decoded == [0, 1, 2, 3] and errors == {}
    assert not np.array_equal(quantized, full)
    a, b = full.reshape(4, -1), quantized.reshape(4, -1)
    assert ((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.99


def test_an_undecodable_file_in_an_int8_batch_is_rejected_alone(trunk, pixels, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with DescriptorExtractor(int8.load_trunk(trunk), batch_size=4) as extractor:
        descriptors, decoded, errors = extract(extractor, [pixels[1][0], str(bad), pixels[1][1]])
    assert decoded == [0, 2] and list(errors) == [1] and descriptors.shape == (2, 49, 64)


def test_a_missing_trunk_or_no_calibration_image_is_one_line(tmp_path, model):
    with pytest.raises(ArtifactError, match="int8 trunk .*missing; run the pipeline to calibrate it"):
        int8.load_trunk(str(tmp_path / int8.TRUNK_FILE))
    with pytest.raises(ArtifactError, match="none of the sampled images could be decoded"):
        int8.calibrate(model, np.zeros((0, 224, 224, 3), np.float32), str(tmp_path / int8.TRUNK_FILE))


def test_int8_is_taken_only_when_set():
    precision, reason, _ = stated("int8", flags=set())
    assert precision == "int8" and "OpenVINO" in reason
    assert "int8" not in candidates(flags={"avx512_vnni", "amx_int8"}, gpus=[])


def test_telemetry_is_declined_unless_the_site_decided(home):
    consent = home / "intel" / "openvino_telemetry"
    int8._decline_telemetry()
    assert consent.read_text().strip() == "0"
    consent.write_text("1")  # a site that accepted it keeps its choice
    int8._decline_telemetry()
    assert consent.read_text() == "1"


def test_a_store_is_calibrated_once_and_never_extended_by_another_trunk(monkeypatch, small_collection, tmp_path):
    from pipeline.collection import scan_content

    content, _ = small_collection
    files = scan_content(str(content))
    store = FeatureStore(str(tmp_path / "store"))
    spec = ModelSpec(weights="random", layer="tiny", precision="int8", colour="rgb", trim=False, calibration_images=16)
    path = int8.trunk_path(store.root)
    backends.calibrate_store(store, spec, files, str(content), max_pixels=10**8)
    made = os.stat(path).st_mtime_ns
    backends.calibrate_store(store, spec, files, str(content), max_pixels=10**8)
    assert os.stat(path).st_mtime_ns == made
    store.write_chunk(["a key"], np.zeros((1, 49, 64), np.float32), {})
    os.remove(path)
    with pytest.raises(ArtifactError, match=r"holds the descriptors of 1 images made by an int8 trunk that is gone"):
        backends.calibrate_store(store, spec, files, str(content), max_pixels=10**8)


def test_a_run_at_int8_calibrates_into_its_store_and_queries_with_that_trunk(monkeypatch, small_collection, tmp_path):
    (tmp_path / "content").symlink_to(small_collection[0])
    config = pipeline_config(tmp_path, resnet__precision="int8", resnet__calibration_images=16)
    with luigi_config(monkeypatch, config):
        result = luigi.build([Similarities()], local_scheduler=True, detailed_summary=True, workers=1)
        assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
        settings = feature_settings()
        assert settings["precision"] == "int8" and settings["calibration_images"] == 16
        attrs = read_attrs(Features().output().path)
        store_root = Features().store().root
    assert attrs["precision"] == "int8" and attrs["int8_trunk"] == int8.trunk_path(store_root)
    made = os.stat(attrs["int8_trunk"]).st_mtime_ns
    artifacts = tmp_path / "artifacts"
    names = ("features.h5", "reducer.h5", "codebook.h5", "histograms.h5", "similarities.hdf5")
    index = SimilarityIndex.load(*(str(artifacts / name) for name in names))
    assert index.spec.precision == "int8" and index.store == store_root
    with (
        luigi_config(monkeypatch, config),
        query_extractor(index.spec, index.store) as extractor,
    ):  # a query: the same trunk
        image = next((tmp_path / "content").glob("PPN*/*.jpg"))
        distances = index.query(extract(extractor, [str(image)])[0], k=3)[1]
    assert distances[0, 0] < 1e-9  # the collection's own image, found as itself
    with luigi_config(monkeypatch, config):  # compare: a trunk per feature store, the run's reused
        assert compare.main(["--sizes", "8", "--trims", "true,false", "--selfcheck", "2"]) == 0
    assert sorted(os.path.basename(p) for p in (artifacts / "features").glob("*/int8-trunk.xml")) == [TRUNK] * 2
    assert os.stat(attrs["int8_trunk"]).st_mtime_ns == made
    with luigi_config(monkeypatch, pipeline_config(tmp_path, resnet__precision="int8", resnet__calibration_images=17)):
        assert not Features().complete()  # another calibration: another feature store
