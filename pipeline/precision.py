"""The precision the model computes in: float32, run by Keras or by OpenVINO's CPU kernels
(``float32-openvino``: the same model and precision); bfloat16 on a CPU that computes in it
natively (AVX512_BF16, AMX), run by OpenVINO with the weights converted once; float16 mixed
precision on an NVIDIA GPU with tensor cores; int8 (a trunk quantized after training, calibrated
on the collection, run by OpenVINO: :mod:`pipeline.int8`), only when set.

``auto`` is decided by measurement: each candidate this machine offers (:func:`candidates`, never
int8) runs the model for a few seconds, and :func:`decide` keeps the fastest, never one slower
than float32. :func:`pipeline.backends.decide_precision` measures, and keeps the decision where
every later run and worker reads it.
"""

import importlib
import os
import sys
import tempfile
from typing import NamedTuple

from .errors import named
from .settings import Resnet

#: Keras's dtype policy of each precision Keras runs (bfloat16 is OpenVINO's, float32 both's).
POLICIES = {"float32": "float32", "float16": "mixed_float16"}
#: ``auto`` keeps a lower precision only where it measures at least this many times float32's speed.
MARGIN = 1.1
#: /proc/cpuinfo flags of the CPUs that compute in bfloat16 natively (AVX512_BF16, AMX).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: NVIDIA GPUs have tensor cores from compute capability 7.0 (Volta) on.
TENSOR_CORES = (7, 0)


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def import_quietly(name):
    """The module ``name`` (TensorFlow or Keras), imported without TensorFlow's start-up lines on
    the standard error, which its C++ runtime writes whatever the log level on some builds; they
    are shown when the import fails, or when ``TF_CPP_MIN_LOG_LEVEL=0`` asks for TensorFlow's log."""
    if name in sys.modules:
        return sys.modules[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return importlib.import_module(name)
    sys.stderr.flush()
    kept = os.dup(2)
    with tempfile.TemporaryFile() as said:
        os.dup2(said.fileno(), 2)
        try:
            return importlib.import_module(name)
        except BaseException:
            os.dup2(kept, 2)
            said.seek(0)
            sys.stderr.buffer.write(said.read())
            sys.stderr.flush()
            raise
        finally:
            os.dup2(kept, 2)
            os.close(kept)


def tensor_core_gpus():
    """Names and compute capabilities of the NVIDIA GPUs with tensor cores that TensorFlow can
    use: list of (str, (major, minor)). TensorFlow is asked only where the NVIDIA driver lists a
    GPU, so that a machine without one never starts TensorFlow's runtime to find out."""
    listed = "/proc/driver/nvidia/gpus"
    if not (os.path.isdir(listed) and os.listdir(listed)):
        return []
    tf = import_quietly("tensorflow")

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):  # none with a CPU-only TensorFlow
        details = tf.config.experimental.get_device_details(gpu)
        capability = tuple(details.get("compute_capability") or (0, 0))
        if capability >= TENSOR_CORES:
            found.append((details.get("device_name", gpu.name), capability))
    return found


class Decision(NamedTuple):
    """The precision the model computes in, why, and what ``auto`` measured (images per second
    of each candidate; None for a set precision)."""

    precision: str
    reason: str
    rates: dict = None


def candidates(flags=None, gpus=None):
    """The precisions ``auto`` measures on this machine: float32 always; float16 where an NVIDIA
    GPU has tensor cores (the model runs there); else float32 run by OpenVINO, and bfloat16 where
    the CPU computes in it natively.

    Parameters
    ----------
    flags : set of str, optional
        The CPU's flags (:func:`cpu_flags` by default).
    gpus : list of (str, (int, int)), optional
        The usable GPUs with tensor cores (:func:`tensor_core_gpus` by default).

    Returns
    -------
    candidates : list of str
        float32 first.
    """
    flags = cpu_flags() if flags is None else flags
    gpus = tensor_core_gpus() if gpus is None else gpus
    if gpus:
        return ["float32", "float16"]
    bfloat16 = ["bfloat16"] if any(flag in flags for flag in CPU_BF16_FLAGS) else []
    return ["float32", "float32-openvino", *bfloat16]


def decide(rates):
    """``auto``'s choice from the measured images per second of each candidate (float32 among
    them): the fastest, where it is at least ``MARGIN`` times float32's (a lower precision rounds,
    and another runtime is another feature store, so it must pay for that), else float32.

    Returns
    -------
    decision : Decision
    """
    fastest = max(rates, key=lambda name: (rates[name], name == "float32"))
    chosen = fastest if rates[fastest] >= MARGIN * rates["float32"] else "float32"
    measured = ", ".join(f"{name} {rate:.1f}" for name, rate in sorted(rates.items(), key=lambda item: -item[1]))
    return Decision(chosen, f"auto: {chosen}, the fastest of those measured (images/s: {measured})", rates)


def stated(setting, flags=None):
    """The :class:`Decision` of a precision set in the settings (not ``auto``): taken as it is,
    with a word where it is emulated or calibrated."""
    Resnet.check("precision", setting)
    flags = cpu_flags() if flags is None else flags
    if setting == "bfloat16" and not any(flag in flags for flag in CPU_BF16_FLAGS):
        return Decision(
            setting,
            f"set in {named('the settings')}; this CPU has no native bfloat16, so it is emulated and slower than float32",
        )
    if setting == "float16":
        return Decision(
            setting, f"set in {named('the settings')}; float16 is fast on a GPU with tensor cores, emulated on a CPU"
        )
    if setting == "int8":
        return Decision(
            setting,
            f"set in {named('the settings')}; calibrated on a sample of the collection, run by OpenVINO on the CPU",
        )
    return Decision(setting, f"set in {named('the settings')}")
