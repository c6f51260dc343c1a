"""The base of every stage: an artifact that records the settings and inputs it was made from."""

import contextlib
import datetime
import errno
import functools
import hashlib
import json
import logging
import os
import sys
import threading
import time

import luigi
import luigi.interface

from pipeline import runlock
from pipeline.checkpoints import Checkpoints
from pipeline.errors import ArtifactError
from pipeline.h5io import atomic_path, read_attrs, read_problem, remove_stale_temporaries

from . import config

logger = logging.getLogger("luigi-interface")


def settings_digest(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: errno values that mean the artifacts' storage cannot take a write.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextlib.contextmanager
def artifacts_writable():
    """Turn a failed write to full, read-only or forbidden storage into a one-line ArtifactError.

    The artifact being written is left as it was (every write goes to a temporary file that
    is removed on failure), and so is every earlier one.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRORS:
            raise
        raise ArtifactError(
            f"cannot write under [paths] artifacts={config.paths().artifacts!r}: {os.strerror(exc.errno)}; the earlier "
            "artifacts are as they were: free space or make it writable, then run again"
        ) from None


class Progress:
    """Reports a long task's progress to Luigi (the central scheduler's page shows it) and,
    every ``[progress] interval`` seconds and at the end, to the log.

    Called as ``progress(done, total)`` by a pipeline function.
    """

    def __init__(self, task, what, unit="images"):
        self.task, self.what, self.unit, self.interval = task, what, unit, config.progress().interval
        self.start = self.logged = time.monotonic()

    def __call__(self, done, total):
        now = time.monotonic()
        rate = done / max(now - self.start, 1e-9)
        left = (total - done) / rate if rate > 0 else 0.0
        message = (
            f"{self.what} {done:,} / {total:,} {self.unit}, {rate:,.1f} {self.unit}/s, about {_duration(left)} left"
        )
        self.task.set_status_message(message)
        self.task.set_progress_percentage(round(100 * done / total) if total else 100)
        if now - self.logged >= self.interval or done == total:
            self.logged = now
            logger.info("%s: %s", self.task.task_id, message)


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def today():
    """The local date now."""
    return datetime.date.today()


class RunDate(luigi.DateParameter):
    """A run's date: by default the day the run's task is made (a worker kept alive past
    midnight starts the next night's run with the next date), not the day the module was imported."""

    @property
    def _default(self):
        return today()

    @_default.setter
    def _default(self, value):  # luigi.Parameter.__init__ sets the static default; the date is told when asked
        pass


def _holding(method):
    """``method`` (a task's ``complete`` or ``run``), after holding the artifacts folder for the task's run."""

    @functools.wraps(method)
    def holding(self, *args, **kwargs):
        hold_artifacts(self.date)
        return method(self, *args, **kwargs)

    holding.holds_artifacts = True
    return holding


class RunTask(luigi.Task):
    """A task of one run: the run's date, whether it refits the reducer and codebook, and whether
    it finds every image's neighbours again.

    Asking whether one is complete, or running it, first holds the artifacts folder for the run
    of its date (:func:`hold_artifacts`): the first question Luigi asks of a run's graph takes the
    folder, before anything is scheduled. Making a task (to find a path) holds nothing.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("complete", "run"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "holds_artifacts", False):
                setattr(cls, name, _holding(method))

    date = RunDate(description="The run's date: one run per date (default today, told when the run starts).")
    refit = luigi.BoolParameter(
        default=False, significant=False, description="Refit the reducer and the codebook in this run."
    )
    full = luigi.BoolParameter(
        default=False,
        significant=False,
        description="Find every image's neighbours again, not only where they can have changed.",
    )

    @_holding
    def complete(self):
        return super().complete()

    def run_args(self):
        """This run's parameters, for the tasks it requires."""
        return {"date": self.date, "refit": self.refit, "full": self.full}


_CHECK = threading.local()


def requirements_complete(task):
    """Whether every task ``task`` requires is complete. Each stage's completeness takes in that
    of what it requires, so one check reaches a stage by many paths of the graph: within the
    outermost call each stage is asked once."""
    memo = getattr(_CHECK, "memo", None)
    outer = memo is None
    if outer:
        memo = _CHECK.memo = {}
    try:
        for required in luigi.task.flatten(task.requires()):
            if required.task_id not in memo:
                memo[required.task_id] = required.complete()
            if not memo[required.task_id]:
                return False
        return True
    finally:
        if outer:
            _CHECK.memo = None


def hold_artifacts(date):
    """Hold ``[paths] artifacts`` for the run of ``date`` until the process ends: one run at a
    time per folder, whatever its date and whichever machine starts it; the workers of one run
    on a central scheduler share it. Another run holding it stops this process before any task
    is scheduled, with one line and ``[retcode] already_running`` (Luigi's exit code for a run
    stopped by its process lock), having written nothing."""
    folder = config.paths().artifacts
    try:
        heartbeat, stale_after = config.lock().heartbeat, config.lock().stale_after
    except ValueError:  # CheckSettings names the bad value; the defaults hold the folder meanwhile
        heartbeat, stale_after = runlock.HEARTBEAT, runlock.STALE_AFTER
    try:
        os.makedirs(folder, exist_ok=True)
        runlock.hold(
            folder,
            date.isoformat(),
            central=not luigi.interface.core().local_scheduler,
            heartbeat=max(heartbeat, 0.01),
            stale_after=stale_after,
        )
    except runlock.RunLockHeld as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise luigi.interface.PidLockAlreadyTakenExit() from None
    except OSError as exc:  # storage that takes no file takes no artifact either: the stages report it
        logger.warning("the run lock of %s cannot be written (%s): running without it", folder, exc.strerror or exc)


class RunInput(RunTask, luigi.ExternalTask):
    """An input from outside the graph (the collection, the ID mapping, the CMS), for one run:
    when it is missing, the run's report says which setting names it and what to do."""

    def missing_message(self):
        """One line naming the setting and the fix."""
        raise NotImplementedError


class ArtifactTask(RunTask):
    """A stage of one run writing one HDF5 file under ``[paths] artifacts``.

    The file records the digest of the settings that change the stage's result and the
    digests of the artifacts it was made from. The stage is complete when every stage it
    requires is complete, and its file exists, is readable and records the current settings
    and the current digests of its inputs. So a rerun skips what is done, a changed setting
    or input redoes the stages after it, and a truncated or outdated file is made again.

    Subclasses implement :meth:`make`, which writes the artifact to a temporary path. An
    artifact that is there but cannot be read is made again with a warning, in the log and, as
    ``repaired``, in its new attributes (the run report lists them).
    """

    filename = None
    #: What making an unreadable artifact again does, for the warning.
    remade = "made again"

    def settings(self):
        """The settings that change this stage's result (JSON-serialisable)."""
        return {}

    def made_from(self):
        """The required stages whose artifacts this one is made from (all, by default)."""
        return [t for t in luigi.task.flatten(self.requires()) if isinstance(t, ArtifactTask)]

    def input_digests(self):
        return {t.task_family: read_attrs(t.output().path)["digest"] for t in self.made_from()}

    def output(self):
        return luigi.LocalTarget(os.path.join(config.paths().artifacts, self.filename), format=luigi.format.Nop)

    def recorded(self):
        """The attributes of the existing artifact, or None when there is none or it is unreadable."""
        try:
            return read_attrs(self.output().path)
        except OSError:  # missing, truncated or not HDF5: make it again
            return None

    def complete(self):
        if not requirements_complete(self):
            return False
        attrs = self.recorded()
        return (
            attrs is not None
            and attrs.get("settings_digest") == settings_digest(self.settings())
            and json.loads(attrs.get("inputs", "null")) == self.input_digests()
        )

    def run(self):
        if self.complete():
            # decided only now that the inputs are made: a stage kept across runs (the
            # reducer) leaves what follows from it complete as well
            logger.info("%s: the existing artifact is still valid", self.task_family)
            return
        self._started = time.time()
        self._repaired = self.damage()
        if self._repaired:
            logger.warning("%s", self._repaired)
        with artifacts_writable():
            remove_stale_temporaries(self.output().path)  # the run lock: no other run writes here
            with atomic_path(self.output().path) as tmp:
                self.make(tmp)
            self.checkpoints().clear()

    def make(self, tmp):
        raise NotImplementedError

    def damage(self):
        """A warning when the artifact is there but cannot be read (truncated, zeroed, unreadable), or
        is missing where an earlier run made one it is kept from (:meth:`made_before`); else None."""
        path = self.output().path
        if not os.path.lexists(path):
            return f"{os.path.basename(path)} is missing: {self.remade}" if self.made_before() else None
        try:
            read_attrs(path)
        except OSError as exc:
            return f"{os.path.basename(path)} is unreadable ({read_problem(exc)}): {self.remade}"
        return None

    def made_before(self):
        """Whether an earlier run made this artifact, for a stage kept across runs (none by default)."""
        return False

    def digest(self):
        """This artifact's digest: of its settings and its inputs' digests."""
        return settings_digest({"settings": self.settings(), "inputs": self.input_digests()})

    def attrs(self, **extra):
        """File attributes every artifact carries, plus ``extra``."""
        return {
            "digest": self.digest(),
            "settings_digest": settings_digest(self.settings()),
            "settings": json.dumps(self.settings(), default=str),
            "inputs": json.dumps(self.input_digests()),
            "stage": self.task_family,
            "run_date": self.date.isoformat(),
            "seconds": round(time.time() - self._started, 3),
            **({"repaired": self._repaired} if getattr(self, "_repaired", None) else {}),
            **extra,
        }

    def checkpoints(self):
        """Checkpoints of this stage for its current inputs, under ``<artifacts>/work/``."""
        return Checkpoints(os.path.join(config.paths().artifacts, "work", f"{self.task_family}-{self.digest()}"))
