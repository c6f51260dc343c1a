import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, WeightsError
from pipeline.features import DescriptorExtractor
from pipeline.int8 import OpenVinoTrunk, convert
from pipeline.model import IMAGENET_FILE, build_model, layer_side, weights_identity

from .decoders import decoder_processes, misbehaving
from .faults import tiny_model

pytestmark = pytest.mark.resnet  # the model's own tests


@pytest.fixture(scope="module")
def model():
    return build_model(weights="random", layer="conv5_block3_out", seed=0)


@pytest.fixture(scope="module")
def tiny():
    """The stand-in model, for the tests of the decoders around the model."""
    return tiny_model()


@pytest.fixture(scope="module")
def extractor(model):
    with DescriptorExtractor(model, batch_size=4) as extractor:
        yield extractor


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (root / "bad.jpg").write_bytes(b"<html>404</html>")
    return paths, str(root / "bad.jpg")


def test_default_layer_gives_49_descriptors_of_2048(model):
    assert tuple(model.output.shape) == (None, 7, 7, 2048)


def test_descriptors_do_not_depend_on_batch_neighbours(extractor, image_paths):
    paths, bad = image_paths
    together = np.concatenate([d for _, d, _, _ in extractor.run(paths)])
    alone = np.concatenate([d for _, d, _, _ in extractor.run(paths[::-1])])[::-1]
    assert together.shape == (5, 49, 2048) and together.dtype == np.float32
    np.testing.assert_array_equal(together, alone)
    assert np.isfinite(together.astype(np.float32)).all()


def test_a_bad_file_fails_alone(extractor, image_paths):
    paths, bad = image_paths
    batches = list(extractor.run([paths[0], bad, paths[1]]))
    assert len(batches) == 1
    start, descriptors, errors, _ = batches[0]
    assert start == 0 and list(errors) == [1] and "\n" not in errors[1]
    clean = next(extractor.run([paths[0], paths[1]]))[1]
    np.testing.assert_array_equal(descriptors[[0, 2]], clean)


def test_batches_cover_every_path_in_order(extractor, image_paths):
    paths, _ = image_paths
    starts = [(s, len(d)) for s, d, _, _ in extractor.run(paths + paths)]
    assert starts == [(0, 4), (4, 4), (8, 2)]


def test_weights_file_path_loads_the_same_model(model, extractor, image_paths, tmp_path):
    path = tmp_path / "resnet50.weights.h5"
    model.save_weights(path)
    loaded = build_model(weights=str(path), layer="conv5_block3_out", seed=1)  # seed is ignored for a file
    a = next(extractor.run(image_paths[0][:2]))[1]
    with DescriptorExtractor(loaded, batch_size=4) as other:
        b = next(other.run(image_paths[0][:2]))[1]
    np.testing.assert_array_equal(a, b)
    assert weights_identity(str(path)).startswith("sha256:")


def test_bfloat16_runs_the_float32_model_in_openvino_to_within_its_rounding(model, extractor, image_paths):
    half = OpenVinoTrunk(convert(model), "bfloat16")  # what precision = bfloat16 runs (pipeline.backends)
    paths = image_paths[0]
    full = np.concatenate([d for _, d, _, _ in extractor.run(paths)])
    with DescriptorExtractor(half, batch_size=4) as other:
        rounded = np.concatenate([d for _, d, _, _ in other.run(paths)])
        alone = np.concatenate([d for _, d, _, _ in other.run(paths[::-1])])[::-1]
    assert rounded.dtype == np.float32 and not np.array_equal(rounded, full)
    np.testing.assert_array_equal(rounded, alone)  # nor on its batch neighbours
    a, b = full.reshape(5, -1), rounded.reshape(5, -1)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    with pytest.raises(ConfigError, match="precision='bfloat16' must be one of float32, float16"):
        build_model(weights="random", precision="bfloat16")  # Keras's mixed bfloat16 cast the weights at every call


def test_float32_openvino_gives_the_keras_maps_to_within_float32_rounding(model, extractor, image_paths):
    ported = OpenVinoTrunk(convert(model), "float32")  # what precision = float32-openvino runs (pipeline.backends)
    paths = image_paths[0]
    full = np.concatenate([d for _, d, _, _ in extractor.run(paths)])
    with DescriptorExtractor(ported, batch_size=4) as other:
        same = np.concatenate([d for _, d, _, _ in other.run(paths)])
    assert same.dtype == np.float32
    np.testing.assert_allclose(same, full, rtol=0, atol=1e-4 * np.abs(full).max())


def test_unknown_layer_names_the_setting_and_the_choices():
    with pytest.raises(ConfigError, match=r"\[resnet\] layer='conv9'.*conv5_block3_out"):
        build_model(weights="random", layer="conv9")


def test_an_unknown_colour_is_refused_before_any_image_is_decoded():
    with pytest.raises(ConfigError, match=r"colour='sepia' must be one of grey, rgb"):
        DescriptorExtractor(model=None, colour="sepia")


def test_imagenet_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: the download fails at once
    with pytest.raises(WeightsError) as info:
        build_model(weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert IMAGENET_FILE in message and str(tmp_path / "models") in message and "random" in message


@pytest.mark.parametrize("content", [None, b"not a weights file"])
def test_unreadable_or_wrong_weights_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "w.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"\[resnet\] weights=") as info:
        build_model(weights=str(path))
    assert "\n" not in str(info.value)


def test_a_file_whose_decoder_hangs_or_crashes_fails_alone(tiny, image_paths, tmp_path):
    paths, _ = image_paths
    for name in ("hang.png", "crash.png"):
        Image.new("RGB", (50, 50)).save(tmp_path / name)
    mixed = [paths[0], str(tmp_path / "hang.png"), paths[1], str(tmp_path / "crash.png"), paths[2]]
    with DescriptorExtractor(tiny, batch_size=4, decode_timeout=3, decode=misbehaving) as extractor:
        batches = list(extractor.run(mixed))
    assert [(start, sorted(errors)) for start, _, errors, _ in batches] == [(0, [1, 3]), (4, [])]
    assert "decode_timeout=3 s" in batches[0][2][1] and "SIGSEGV" in batches[0][2][3]
    descriptors = np.concatenate([d for _, d, _, _ in batches])
    with DescriptorExtractor(tiny, batch_size=4) as clean_extractor:
        clean = np.concatenate([d for _, d, _, _ in clean_extractor.run(paths[:3])])
    np.testing.assert_array_equal(descriptors[[0, 2, 4]], clean)


def test_decoders_outlive_a_run_left_early_and_stop_with_the_extractor(tiny, image_paths):
    others = set(decoder_processes())  # the module's extractor's
    with DescriptorExtractor(tiny, batch_size=4, decode_processes=2) as extractor:
        run = extractor.run(image_paths[0] * 3)
        next(run)
        run.close()
        assert len(set(decoder_processes()) - others) <= 2
        assert len(list(extractor.run(image_paths[0]))) == 2
    assert set(decoder_processes()) == others


def test_layer_side_knows_every_layer_of_resnet50_without_building_it(model):
    base = model.layers  # the cut model holds every layer up to conv5_block3_out, the last
    named = [layer for layer in base if not layer.name.startswith("input")]
    assert len(named) == 174
    for layer in named:
        assert layer_side(layer.name) == layer.output.shape[1], layer.name
    for name in ("conv5_block4_out", "conv2_block2_0_conv", "conv3_block1_3_relu", "conv9", "input_layer", ""):
        assert layer_side(name) is None, name
