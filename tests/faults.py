"""The pipeline's tasks with deterministic faults and a tiny stand-in model, for tests that run
the ``luigi`` command in real processes: ``luigi --module tests.faults Nightly ...``.

Environment variables (all optional):

- ``FAULT_TINY_MODEL=1``: a small seeded convolution in place of ResNet50, with the same
  output shape per image (7 x 7 local descriptors, 64 channels): a run takes seconds.
- ``FAULT_KILL_AT=Stage`` kills the process with SIGKILL when the task ``Stage`` starts;
  ``FAULT_KILL_AT=Stage:N`` when ``Stage`` reports N or more done (images, blocks).
- ``FAULT_PAUSE_AT=Stage:FILE`` holds the process when ``Stage`` starts until FILE exists,
  after writing ``FILE.paused``: a test acts while the run is there, then lets it go on.
"""

import os
import signal
import time

import luigi

import tasks  # noqa: F401 (registers the pipeline's tasks)
from pipeline import backends, model
from tasks.base import Progress


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _stage_and_count(value):
    stage, _, count = value.partition(":")
    return stage, (int(count) if count else None)


KILL_STAGE, KILL_COUNT = _stage_and_count(os.environ.get("FAULT_KILL_AT", ""))
PAUSE_STAGE, _, PAUSE_FILE = os.environ.get("FAULT_PAUSE_AT", "").partition(":")


@luigi.Task.event_handler(luigi.Event.START)
def _at_start(task):
    if task.task_family == KILL_STAGE and KILL_COUNT is None:
        _kill()
    if task.task_family == PAUSE_STAGE:
        open(PAUSE_FILE + ".paused", "w").close()
        while not os.path.exists(PAUSE_FILE):
            time.sleep(0.05)


if KILL_COUNT is not None:
    _report = Progress.__call__

    def _counting(self, done, total):
        _report(self, done, total)
        if self.task.task_family == KILL_STAGE and done >= KILL_COUNT:
            _kill()

    Progress.__call__ = _counting


def tiny_model(seed=0, layers=1):
    """A seeded stand-in for ResNet50 cut at a 7 x 7 layer: 224 x 224 x 3 -> 7 x 7 x 64 (at float32:
    the tests that use it set precision = float32); the same output once for each of ``layers`` asked
    for together."""
    keras = model.import_keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.AveragePooling2D(8)(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.AveragePooling2D(4)(x)
    outputs = keras.layers.Conv2D(64, 1)(x)
    return keras.Model(inputs, outputs if layers == 1 else [outputs] * layers)


class TinyBackend(backends.KerasBackend):
    """The Keras backend with :func:`tiny_model` in place of ResNet50 (any layer, any precision);
    at int8, the trunk is quantized from it. Put in ``backends.BACKENDS["keras"]``."""

    def build(self):
        layers = self.spec.layer
        return tiny_model(self.spec.seed, 1 if isinstance(layers, str) else len(layers))


if os.environ.get("FAULT_TINY_MODEL") == "1":
    backends.BACKENDS["keras"] = TinyBackend
