"""The precision the model computes in: float32, or bfloat16 / float16 mixed precision where
the processor runs it natively, chosen by ``auto`` from what this machine has; or int8, only
when set.

Mixed precision is a Keras dtype policy set while the model is built: the weights stay
float32, the layers compute in the lower precision, and the descriptors come out as float32.
int8 is a trunk quantized after training, calibrated on the collection and run by OpenVINO
(:mod:`pipeline.int8`).
"""

import functools
import importlib
import os
import sys
import tempfile

from .errors import named
from .settings import Resnet

#: Keras's dtype policy of each precision.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
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


def choose_precision(setting, flags=None, gpus=None):
    """The precision to compute in, and why.

    Parameters
    ----------
    setting : {"auto", "float32", "bfloat16", "float16", "int8"}
        ``auto``: float16 with an NVIDIA GPU with tensor cores, bfloat16 on a CPU with native
        bfloat16 (AVX512_BF16 or AMX), float32 elsewhere (never int8); any other value is
        taken as it is.
    flags : set of str, optional
        The CPU's flags (:func:`cpu_flags` by default).
    gpus : list of (str, (int, int)), optional
        The usable GPUs with tensor cores (:func:`tensor_core_gpus` by default).

    Returns
    -------
    precision : {"float32", "bfloat16", "float16", "int8"}
    reason : str
    """
    Resnet.check("precision", setting)
    flags = cpu_flags() if flags is None else flags
    native = [flag for flag in CPU_BF16_FLAGS if flag in flags]
    if setting != "auto":
        if setting == "bfloat16" and not native:
            return (
                setting,
                f"set in {named('the settings')}; this CPU has no native bfloat16, so it is emulated and slower than float32",
            )
        if setting == "float16":
            return (
                setting,
                f"set in {named('the settings')}; float16 is fast on a GPU with tensor cores, emulated on a CPU",
            )
        if setting == "int8":
            return (
                setting,
                f"set in {named('the settings')}; calibrated on a sample of the collection, run by OpenVINO on the CPU",
            )
        return setting, f"set in {named('the settings')}"
    gpus = tensor_core_gpus() if gpus is None else gpus
    if gpus:
        name, (major, minor) = gpus[0]
        return "float16", f"auto: {name} has tensor cores (compute capability {major}.{minor})"
    if native:
        return "bfloat16", f"auto: the CPU computes in bfloat16 natively ({', '.join(native)})"
    return "float32", "auto: no GPU with tensor cores, and the CPU has neither avx512_bf16 nor amx_bf16"


@functools.cache
def chosen_precision(setting):
    """:func:`choose_precision` on this machine, decided once per process: (precision, reason)."""
    return choose_precision(setting)
