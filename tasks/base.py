"""The base of every stage: an artifact that knows the settings and inputs it was made from."""

import hashlib
import json
import os

import luigi

from pipeline.h5io import atomic_path, read_attrs

from .config import paths


class ArtifactTask(luigi.Task):
    """A stage writing one HDF5 file under ``[paths] artifacts``.

    The file records a digest of the settings that change the stage's result and of the
    digests of its inputs. The stage counts as complete only when its file exists and holds
    the digest the current configuration gives, so changing a setting reruns that stage and
    everything after it, while a rerun with the same settings skips it.
    """

    filename = None

    def settings(self):
        """The settings that change this stage's result (JSON-serialisable)."""
        return {}

    def digest(self):
        if getattr(self, "_digest", None) is None:
            upstream = sorted(t.digest() for t in luigi.task.flatten(self.requires()) if isinstance(t, ArtifactTask))
            payload = json.dumps(
                {"stage": self.task_family, "settings": self.settings(), "upstream": upstream}, sort_keys=True
            )
            self._digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return self._digest

    def output(self):
        return luigi.LocalTarget(os.path.join(paths().artifacts, self.filename), format=luigi.format.Nop)

    def complete(self):
        path = self.output().path
        try:
            return os.path.isfile(path) and read_attrs(path).get("digest") == self.digest()
        except OSError:  # unreadable or truncated: make it again
            return False

    def attrs(self):
        """File attributes every artifact carries: its digest and the settings behind it."""
        return {"digest": self.digest(), "stage": self.task_family, "settings": json.dumps(self.settings())}

    def atomic_output(self):
        """A temporary path renamed over the output on success.

        Unlike ``LocalTarget.temporary_path`` this replaces an outdated artifact and removes
        the temporary file when the stage fails.
        """
        return atomic_path(self.output().path)
