import sys

import pytest

from pipeline.errors import ConfigError
from pipeline.precision import choose_precision, cpu_flags

A100 = [("NVIDIA A100-SXM4-40GB", (8, 0))]


@pytest.mark.parametrize(
    "flags, gpus, chosen, because",
    [
        ({"avx2", "avx512f", "avx512_bf16"}, [], "bfloat16", "avx512_bf16"),
        ({"avx2", "amx_bf16", "amx_tile"}, [], "bfloat16", "amx_bf16"),
        ({"avx2", "avx512f", "avx512_vnni"}, [], "float32", "neither avx512_bf16 nor amx_bf16"),
        (set(), [], "float32", "no GPU with tensor cores"),
        ({"avx512_bf16"}, A100, "float16", "NVIDIA A100-SXM4-40GB has tensor cores (compute capability 8.0)"),
    ],
)
def test_auto_takes_what_the_machine_computes_natively(flags, gpus, chosen, because):
    precision, reason = choose_precision("auto", flags=flags, gpus=gpus)
    assert precision == chosen and reason.startswith("auto: ") and because in reason


def test_a_set_precision_is_kept_and_an_emulated_one_said():
    assert choose_precision("float32", flags=set(), gpus=[]) == ("float32", "set in luigi.cfg")
    precision, reason = choose_precision("bfloat16", flags={"avx2"}, gpus=[])
    assert precision == "bfloat16" and "emulated" in reason
    assert choose_precision("bfloat16", flags={"avx512_bf16"}, gpus=[]) == ("bfloat16", "set in luigi.cfg")
    assert choose_precision("float16", flags=set(), gpus=A100)[0] == "float16"


def test_an_unknown_precision_names_the_setting_and_the_choices():
    with pytest.raises(
        ConfigError, match=r"\[resnet\] precision='int4' must be one of auto, float32, bfloat16, float16"
    ):
        choose_precision("int4")


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
