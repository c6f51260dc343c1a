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
import time

import luigi
import luigi.interface

from pipeline import runlock
from pipeline.checkpoints import Checkpoints
from pipeline.errors import ArtifactError, ConfigError
from pipeline.h5io import atomic_path, read_attrs, read_problem, remove_stale_temporaries

from . import config, settings

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
    """``method`` (a task's ``complete`` or ``run``), after holding the artifacts folder for the task's
    run and, asked whether it is complete, after taking its graph into the run's settings check."""

    @functools.wraps(method)
    def holding(self, *args, **kwargs):
        hold_artifacts(self.date)
        if method.__name__ == "complete" and not isinstance(self, CheckSettings):
            CheckSettings(date=self.date).include(self)
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

    #: The sections of luigi.cfg this task reads besides those every task reads (:data:`SECTIONS`):
    #: a run checks those of its tasks before any work.
    sections = ()

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


#: The sections of luigi.cfg every task reads: where the artifacts are, the run lock, the progress lines.
SECTIONS = ("paths", "lock", "progress")


def graph(task):
    """``task`` and every task it requires, directly or not, once each."""
    found, waiting = {}, [task]
    while waiting:
        current = waiting.pop()
        if current.task_id not in found:
            found[current.task_id] = current
            waiting.extend(luigi.task.flatten(current.requires()))
    return list(found.values())


class SettingsChecked(luigi.Target):
    """Whether the settings of a run's tasks can all work."""

    def __init__(self, check):
        self.check = check

    def exists(self):
        return self.check.problem() is None


class CheckSettings(RunTask):
    """The settings of the run's tasks (the sections of luigi.cfg they read), checked before any work:
    complete when every one can work, failing with a one-line message naming the setting and the
    fix when one cannot. Every stage of the run requires it through the inventory, and none is
    complete while it fails, so a bad setting stops the run before anything is made."""

    def include(self, task):
        """Check the sections read by ``task`` and the tasks it requires, too."""
        covered = self.__dict__.setdefault("_covered", set())
        if task.task_id not in covered:
            for found in graph(task):
                covered.add(found.task_id)
                self.__dict__.setdefault("_sections", set(SECTIONS)).update(found.sections)

    def problem(self):
        """The first problem of the run's settings as one line, or None (worked out once per set of sections)."""
        sections = frozenset(self.__dict__.get("_sections", ()))
        if self.__dict__.get("_checked", (None,))[0] != sections:
            self._checked = (sections, settings.settings_problem(sections))
        return self._checked[1]

    def output(self):
        return SettingsChecked(self)

    def run(self):
        raise ConfigError(self.problem())


def hold_artifacts(date):
    """Hold ``[paths] artifacts`` for the run of ``date`` until the process ends: one run at a
    time per folder, whatever its date and whichever machine starts it; the workers of one run
    on a central scheduler share it. Another run holding it stops this process before any task
    is scheduled, with one line and ``[retcode] already_running`` (Luigi's exit code for a run
    stopped by its process lock), having written nothing."""
    folder = config.paths().artifacts
    try:
        heartbeat, stale_after = config.lock().heartbeat, config.lock().stale_after
    except ConfigError:  # CheckSettings names the bad value; the defaults hold the folder meanwhile
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


class RunGuard(RunInput):
    """A guard on the run's inputs (the images still on disk, the verdicts still there): when
    :meth:`check` finds a problem, the run stops here as for a missing input (exit code 20), the
    tasks that depend on it not run, and its report gives the problem's line."""

    def check(self):
        """One line naming the problem and the fix, or None."""
        raise NotImplementedError

    def problem(self):
        """:meth:`check`, worked out once per task."""
        if "_problem" not in self.__dict__:
            self._problem = self.check()
        return self._problem

    def complete(self):
        return self.problem() is None

    def missing_message(self):
        return self.problem()


class Stage(RunTask):
    """A stage of one run, whose result carries its identity in a small record.

    A stage's identity is the digest of the settings that change its result and of the
    identities of the stages it is made from: worked out from the settings alone, once per task,
    without reading any result. Two kinds of stage take theirs from their record instead:
    ``observed`` ones, whose result depends on what they found outside the graph (the inventory,
    the verdicts: the recorded identity holds for the settings and inputs it records), and
    ``kept`` ones, made on an earlier date and kept until a refit (the recorded identity holds
    for the settings it records, unless :meth:`outdated`).

    A stage is complete when the run's settings can work and its record names its identity:
    one small record read per stage. So a rerun skips what is done, and a changed setting or
    input redoes the stages after it.
    """

    observed = False
    kept = False

    def settings(self):
        """The settings that change this stage's result (JSON-serialisable)."""
        return {}

    def made_from(self):
        """The required stages whose results this one is made from (all, by default)."""
        return [t for t in luigi.task.flatten(self.requires()) if isinstance(t, Stage)]

    def record(self):
        """What the existing result records of itself (a dict with ``digest``), or None when there
        is none or it cannot be read."""
        raise NotImplementedError

    def outdated(self, record):
        """Why a result whose record is otherwise current must be made again (a reason), or None."""
        return None

    def input_identities(self):
        """The identities of the stages this one is made from, by stage; None while one is unknown."""
        identities = {t.task_family: t.identity() for t in self.made_from()}
        return None if None in identities.values() else identities

    def identity(self):
        """This stage's identity, or None while it cannot be known (an observed or kept stage still
        to be made, or one made from it)."""
        known = self.__dict__.get("_identity")
        if known is None:
            known = self._work_out_identity()
            if known is not None:
                self.__dict__["_identity"] = known
        return known

    def _work_out_identity(self):
        inputs = self.input_identities()
        if inputs is None:
            return None
        if not (self.observed or self.kept):
            return settings_digest({"settings": self.settings(), "inputs": inputs})
        record = self.record()
        if record is None or record.get("settings_digest") != settings_digest(self.settings()):
            return None
        if self.observed and json.loads(record.get("inputs", "null")) != inputs:
            return None
        if self.kept and (self.outdated(record) or not all(t.complete() for t in self.made_from())):
            return None  # decided once what it is kept from is made: a refit depends on it
        return record.get("digest")

    def made_identity(self):
        """The identity of the result being made now: of the settings, the inputs and, for an observed
        stage, what it found (``self.found``)."""
        made = {"settings": self.settings(), "inputs": self.input_identities()}
        if self.observed:
            made["found"] = self.found
        return settings_digest(made)

    def complete(self):
        if CheckSettings(date=self.date).problem() is not None:
            return False
        identity = self.identity()
        record = self.record() if identity is not None else None
        return record is not None and record.get("digest") == identity and not self.outdated(record)

    def record_fields(self, **extra):
        """What every result records of itself, plus ``extra``."""
        return {
            "digest": self.made_identity(),
            "settings_digest": settings_digest(self.settings()),
            "settings": json.dumps(self.settings(), default=str),
            "inputs": json.dumps(self.input_identities()),
            "stage": self.task_family,
            "run_date": self.date.isoformat(),
            **extra,
        }


class ArtifactTask(Stage):
    """A stage of one run writing one HDF5 file under ``[paths] artifacts``, its record in the
    file's attributes.

    Subclasses implement :meth:`make`, which writes the artifact to a temporary path. An
    artifact that is there but cannot be read is made again with a warning, in the log and, as
    ``repaired``, in its new attributes (the run report lists them).
    """

    filename = None
    #: What making an unreadable artifact again does, for the warning.
    remade = "made again"

    def output(self):
        return luigi.LocalTarget(os.path.join(config.paths().artifacts, self.filename), format=luigi.format.Nop)

    def record(self):
        try:
            return read_attrs(self.output().path)
        except OSError:  # missing, truncated or not HDF5: make it again
            return None

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

    def attrs(self, **extra):
        """File attributes every artifact carries, plus ``extra``."""
        repaired = {"repaired": self._repaired} if getattr(self, "_repaired", None) else {}
        return self.record_fields(**{"seconds": round(time.time() - self._started, 3), **repaired, **extra})

    def checkpoints(self):
        """Checkpoints of this stage for its current inputs, under ``<artifacts>/work/``."""
        return Checkpoints(os.path.join(config.paths().artifacts, "work", f"{self.task_family}-{self.made_identity()}"))
