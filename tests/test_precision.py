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
