"""The precision the model computes in: ``auto`` decided by measurement and kept for every worker,
a set precision taken as it is."""

import json
import os
import sys

import luigi
import pytest

from pipeline import backends
from pipeline.backends import ModelSpec, decide_precision
from pipeline.errors import ConfigError
from pipeline.h5io import read_attrs
from pipeline.precision import candidates, cpu_flags, decide, stated
from tasks import Features, Nightly
from tasks.base import settings_digest
from tasks.extraction import feature_settings

from .conftest import luigi_config, pipeline_config

A100 = [("NVIDIA A100-SXM4-40GB", (8, 0))]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """OpenVINO's telemetry decision is written under $HOME: a home of the test's own."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(autouse=True)
def decided_afresh():
    decide_precision.cache_clear()  # decided once per process: once per test here
    yield
    decide_precision.cache_clear()


@pytest.mark.parametrize(
    "flags, gpus, expected",
    [
        ({"avx2", "avx512f", "avx512_bf16"}, [], ["float32", "float32-openvino", "bfloat16"]),
        ({"avx2", "amx_bf16", "amx_tile"}, [], ["float32", "float32-openvino", "bfloat16"]),
        ({"avx2", "avx512f", "avx512_vnni", "amx_int8"}, [], ["float32", "float32-openvino"]),  # int8: never auto's
        (set(), [], ["float32", "float32-openvino"]),
        ({"avx512_bf16"}, A100, ["float32", "float16"]),  # the model runs on the GPU
    ],
)
def test_auto_measures_what_the_machine_computes_natively(flags, gpus, expected):
    assert candidates(flags=flags, gpus=gpus) == expected


@pytest.mark.parametrize(
    "rates, chosen",
    [
        ({"float32": 32.0, "bfloat16": 257.3}, "bfloat16"),
        ({"float32": 18.0, "bfloat16": 17.0}, "float32"),  # slower than float32: never
        ({"float32": 18.0, "bfloat16": 19.0}, "float32"),  # within the margin: rounding must pay
        ({"float32": 18.0, "bfloat16": 18.0}, "float32"),
        ({"float32": 100.0, "float16": 300.0}, "float16"),
        ({"float32": 14.4, "float32-openvino": 24.4}, "float32-openvino"),  # the AVX2-only EPYC's bare passes
        ({"float32": 32.0, "float32-openvino": 50.0, "bfloat16": 257.3}, "bfloat16"),
    ],
)
def test_auto_keeps_the_fastest_and_never_one_slower_than_float32(rates, chosen):
    decision = decide(rates)
    assert decision.precision == chosen and decision.rates == rates
    assert decision.reason.startswith(f"auto: {chosen}, the fastest of those measured (images/s: ")


def test_a_set_precision_is_kept_and_an_emulated_one_said():
    assert stated("float32", flags=set()) == ("float32", "set in luigi.cfg", None)
    decision = stated("bfloat16", flags={"avx2"})
    assert decision.precision == "bfloat16" and "emulated" in decision.reason
    assert stated("bfloat16", flags={"avx512_bf16"}).reason == "set in luigi.cfg"
    assert stated("float16", flags=set()).precision == "float16"
    assert stated("float32-openvino", flags=set()) == ("float32-openvino", "set in luigi.cfg", None)
    assert "OpenVINO" in stated("int8").reason


def test_an_unknown_precision_names_the_setting_and_the_choices():
    with pytest.raises(
        ConfigError,
        match=r"\[resnet\] precision='int4' must be one of auto, float32, float32-openvino, bfloat16, float16",
    ):
        stated("int4")


def measuring(monkeypatch, rates, names=("float32", "bfloat16")):
    """auto on a machine with ``names`` to measure, whose measurement gives ``rates``; the
    measurements made are appended to the list returned."""
    made = []
    monkeypatch.setattr(backends, "candidates", lambda: list(names))

    def measure(spec, names, batch_size=16):
        made.append((spec.precision, tuple(names)))
        return dict(rates)

    monkeypatch.setattr(backends, "measure_precisions", measure)
    return made


def test_auto_is_measured_once_and_kept_for_every_worker_and_night(monkeypatch, tmp_path):
    record = str(tmp_path / "features" / "precision-x.json")
    spec = ModelSpec(weights="random", layer="tiny")
    made = measuring(monkeypatch, {"float32": 30.0, "bfloat16": 200.0})
    first = decide_precision(spec, record)
    assert first.precision == "bfloat16" and made == [("auto", ("float32", "bfloat16"))]
    kept = json.loads(open(record).read())
    assert kept["precision"] == "bfloat16" and kept["rates"] == {"float32": 30.0, "bfloat16": 200.0}
    assert os.listdir(tmp_path / "features") == ["precision-x.json"]  # no temporary left
    decide_precision.cache_clear()  # another worker, on a machine that would measure otherwise
    measuring(monkeypatch, {"float32": 30.0, "bfloat16": 20.0})
    follower = decide_precision(spec, record)
    assert follower.precision == "bfloat16" and follower.rates == first.rates
    assert "measured on " in follower.reason and "kept in precision-x.json" in follower.reason


def test_an_unreadable_decision_is_measured_and_kept_again(monkeypatch, tmp_path, caplog):
    record = tmp_path / "precision-x.json"
    record.write_text('{"precision": "bflo')  # a write cut short
    made = measuring(monkeypatch, {"float32": 30.0, "bfloat16": 31.0})
    assert decide_precision(ModelSpec(weights="random", layer="tiny"), str(record)).precision == "float32"
    assert len(made) == 1 and "cannot be read" in caplog.text
    assert json.loads(record.read_text())["precision"] == "float32"


def test_a_decision_that_cannot_be_kept_is_still_made(monkeypatch, tmp_path, caplog):
    (tmp_path / "a file").write_text("")  # where the artifacts' folder should be: nothing can be kept
    measuring(monkeypatch, {"float32": 30.0, "bfloat16": 200.0})
    record = tmp_path / "a file" / "features" / "precision-x.json"
    assert decide_precision(ModelSpec(weights="random", layer="tiny"), str(record)).precision == "bfloat16"
    assert "the decision cannot be kept" in caplog.text


def test_a_set_precision_measures_nothing_and_keeps_nothing(monkeypatch, tmp_path):
    made = measuring(monkeypatch, {})
    for precision in ("int8", "float32", "float32-openvino"):
        assert decide_precision(ModelSpec(precision=precision), str(tmp_path / "a.json")).precision == precision
    assert made == [] and not (tmp_path / "a.json").exists()


def test_a_decision_kept_by_an_earlier_release_on_a_float32_only_machine_is_followed(monkeypatch, tmp_path):
    """Earlier releases kept float32 unmeasured where it was the only candidate: that store stays
    Keras's float32 (another runtime would extract every image again) until the file is deleted."""
    record = tmp_path / "precision-x.json"
    reason = "auto: float32, the only precision this machine computes natively"
    record.write_text(json.dumps({"precision": "float32", "reason": reason, "rates": {"float32": None}}))
    made = measuring(monkeypatch, {"float32": 14.4, "float32-openvino": 24.4})
    assert decide_precision(ModelSpec(weights="random", layer="tiny"), str(record)) == (
        "float32",
        reason,
        {"float32": None},
    )
    assert made == []


def test_the_measurement_runs_each_candidates_forward_pass(monkeypatch):
    rates = backends.measure_precisions(
        ModelSpec(weights="random", layer="tiny"),
        ["float32", "float32-openvino", "bfloat16"],
        batch_size=4,
        seconds=0.3,
        rounds=2,
    )
    assert set(rates) == {"float32", "float32-openvino", "bfloat16"} and all(rate > 0 for rate in rates.values())


@pytest.mark.parametrize(
    "rates, chosen, computes",
    [
        ({"float32": 30.0, "float32-openvino": 50.0, "bfloat16": 200.0}, "bfloat16", "bfloat16"),
        ({"float32": 14.4, "float32-openvino": 24.4}, "float32-openvino", "float32"),
    ],
)
def test_a_run_at_auto_records_its_decision_and_why(monkeypatch, small_collection, tmp_path, rates, chosen, computes):
    (tmp_path / "content").symlink_to(small_collection[0])
    measuring(monkeypatch, rates, names=tuple(rates))
    config = pipeline_config(tmp_path, resnet__precision="auto")
    with luigi_config(monkeypatch, config):
        result = luigi.build([Nightly()], local_scheduler=True, detailed_summary=True, workers=1)
        assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
        attrs = read_attrs(Features().output().path)
        store = Features().store().root
        settings = feature_settings()
    assert attrs["precision"] == chosen and "the fastest of those measured" in attrs["precision_reason"]
    assert settings["precision"] == computes and settings["runtime"] == "openvino"  # the store of its runtime
    assert store.endswith(settings_digest(settings))
    report = json.loads((tmp_path / "artifacts" / "run_report.json").read_text())
    assert report["precision"]["precision"] == chosen
    assert report["precision"]["measured"] == rates
    assert list((tmp_path / "artifacts" / "features").glob("precision-*.json"))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "none")) == set()


def test_a_quiet_import_hides_the_runtimes_start_up_lines_and_shows_them_when_it_fails(tmp_path, monkeypatch, capfd):
    from pipeline.precision import import_quietly

    (tmp_path / "chatty.py").write_text("import os\nos.write(2, b'I0000 start-up line\\n')\n")
    (tmp_path / "broken.py").write_text("import os\nos.write(2, b'I0000 why it broke\\n')\nraise ImportError('no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    assert import_quietly("chatty").__name__ == "chatty"
    assert "start-up line" not in capfd.readouterr().err
    with pytest.raises(ImportError):
        import_quietly("broken")
    assert "why it broke" in capfd.readouterr().err
    monkeypatch.delitem(sys.modules, "chatty")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # asked for: TensorFlow's log
    import_quietly("chatty")
    assert "start-up line" in capfd.readouterr().err
