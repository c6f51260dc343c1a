"""Checkpoints inside a long stage: per-block results committed atomically, so a killed stage resumes."""

import glob
import logging
import os
import re
import shutil
import time

import h5py

from .h5io import atomic_path, create

logger = logging.getLogger(__name__)


class Checkpoints:
    """A folder of block results for one stage and one set of inputs.

    Name the folder after the digest of the artifact being made: a resumed run with the same
    inputs and settings finds its blocks again, and blocks made for other inputs are never
    mixed in. Each file is written whole or not at all.

    Parameters
    ----------
    directory : str
    state_interval : float
        Seconds between two saves of a running state (see :meth:`save_state`).
    """

    def __init__(self, directory, state_interval=60.0):
        self.directory = directory
        self.state_interval = state_interval
        self._last_state = time.monotonic()

    def _path(self, kind, i):
        return os.path.join(self.directory, f"{kind}-{i:09d}.h5")

    def load(self, i):
        """The arrays saved for block ``i``, or None."""
        path = self._path("block", i)
        if not os.path.exists(path):
            return None
        with h5py.File(path, "r") as f:
            return {name: f[name][()] for name in f}

    def _write(self, path, arrays):
        with atomic_path(path) as tmp:
            with create(tmp) as f:
                for name, value in arrays.items():
                    f.create_dataset(name, data=value)

    def save(self, i, arrays):
        """Commit the arrays of block ``i``."""
        self._write(self._path("block", i), arrays)

    def save_state(self, i, arrays, force=False):
        """Commit a running state reached after block ``i`` when ``state_interval`` has passed
        since the last save (or ``force``); earlier states are removed."""
        if not force and time.monotonic() - self._last_state < self.state_interval:
            return
        self._write(self._path("state", i), arrays)
        for old in self._states():
            if old[0] < i:
                os.remove(old[1])
        self._last_state = time.monotonic()

    def latest_state(self):
        """(i, arrays) of the newest saved state, or (None, None)."""
        states = self._states()
        if not states:
            return None, None
        i, path = states[-1]
        with h5py.File(path, "r") as f:
            logger.info("resuming after block %d from %s", i, self.directory)
            return i, {name: f[name][()] for name in f}

    def _states(self):
        found = []
        for path in glob.glob(os.path.join(self.directory, "state-*.h5")):
            match = re.fullmatch(r"state-(\d+)\.h5", os.path.basename(path))
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def clear(self):
        """Remove the folder once the artifact it served is written."""
        shutil.rmtree(self.directory, ignore_errors=True)
