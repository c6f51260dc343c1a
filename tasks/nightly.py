"""The scheduled entry point: one run per date, ending with its run report."""

import logging
import os
import shutil

import luigi

from pipeline import cms, collection, html_report, store
from pipeline.codebook import Codebook as CodebookModel
from pipeline.copies import load_copies
from pipeline.h5io import read_attrs
from pipeline.output import read_similarities
from pipeline.query import run_counts
from pipeline.report import now, publish_report, read_json, run_report, summary_line
from pipeline.verdicts import load_verdicts

from . import config
from .atlas import Map, MapLayout
from .base import RunInput, RunTask, artifacts_writable
from .checks import SelfCheck
from .copies import Copies, copies_wanted
from .evaluation import Evaluate
from .extraction import Features
from .fitting import Codebook, Reducer
from .histograms import Histograms
from .inputs import LastRun
from .inventory import Inventory
from .load import LoadCopies, LoadSimilarities, copies_loaded
from .neighbours import Similarities
from .thumbnails import Thumbnails, views_summary
from .verdicts import Verdicts

logger = logging.getLogger("luigi-interface")

STAGES = (Inventory, Features, Reducer, Codebook, Histograms, Verdicts, Similarities, MapLayout, Map)


class RunReport(luigi.LocalTarget):
    """A run's report, there when the run ended well (status ok)."""

    def exists(self):
        report = read_json(self.path)
        return report is not None and report.get("status") == "ok"


class Asked(luigi.Target):
    """The result of a task made whenever it is asked for: never there before."""

    def exists(self):
        return False


class Nightly(RunTask):
    """``luigi --module tasks Nightly --local-scheduler [--date YYYY-MM-DD] [--refit]``.

    Brings similarities.hdf5 up to date with the collection and writes the run report;
    a second call for the same date does nothing.
    """

    sections = ("cms", "evaluate", "verdicts", "selfcheck", "copies", "serve", "images", "report")

    show = luigi.Parameter(
        default="", significant=False, description="Database IDs the visual report shows first, comma-separated."
    )

    def requires(self):
        similarities = Similarities(**self.run_args())
        required = {"similarities": similarities}
        if config.cms().url.strip():
            required["cms"] = LoadSimilarities(**self.run_args())
        if config.evaluate().labels.strip() or config.verdict_source()[0] != "none":
            required["evaluation"] = Evaluate(**self.run_args())
        if config.selfcheck().sample > 0:
            required["selfcheck"] = SelfCheck(**self.run_args())
        if copies_wanted():
            required["copies"] = Copies(**self.run_args())
        if copies_loaded():
            required["cms_copies"] = LoadCopies(**self.run_args())
        required["map"] = Map(**self.run_args())
        if config.views_made():
            required["thumbnails"] = Thumbnails(date=self.date)
        return required

    def output(self):
        return RunReport(os.path.join(config.paths().artifacts, "runs", self.date.isoformat(), "run_report.json"))

    def run(self):
        date = self.date.isoformat()
        artifacts = {stage.__name__: read_attrs(stage(**self.run_args()).output().path) for stage in STAGES}
        inventory = collection.load_inventory(Inventory(date=self.date).output().path)
        index = store.load_index(Features(date=self.date).output().path)
        checks = {
            name: read_json(self.input()[name].path) for name in ("evaluation", "selfcheck") if name in self.input()
        }
        bad = None
        if config.verdict_source()[0] != "none":
            bad = load_verdicts(Verdicts(date=self.date).output().path)[1]
        copies = read_attrs(self.input()["copies"].path) if "copies" in self.input() else None
        report = run_report(
            date,
            artifacts,
            inventory,
            index,
            os.path.abspath(self.input()["similarities"].path),
            load_summary(self.input()),
            **checks,
            bad_verdicts=bad,
            copies=copies,
            views=views_summary() if "thumbnails" in self.input() else None,
        )
        with artifacts_writable():
            publish_report(config.paths().artifacts, date, report)
            visual_report(self.date, report, self.show, inventory)
        shutil.rmtree(LastRun(date=self.date).output().path, ignore_errors=True)  # the night is done with it
        logger.info("%s", summary_line(report, os.path.join(config.paths().artifacts, "report.html")))


def load_summary(inputs):
    """Where the night's lists (and copies) were loaded, for the report; None without a CMS."""
    if "cms" not in inputs:
        return None
    load = {
        "url": cms.shown(cms.resolve_url(config.cms().url)),
        "mode": config.cms().mode,
        "target": config.destination().target,
    }
    if "cms_copies" in inputs:
        load["copies_table"] = config.cms().copies_table
    return load


def visual_report(date, run, show="", inventory=None):
    """Write ``<artifacts>/report.html`` for the run of ``date`` (see pipeline.html_report), from
    its inventory (read when not given)."""
    if inventory is None:
        inventory = collection.load_inventory(Inventory(date=date).output().path)
    result = read_similarities(Similarities(date=date).output().path)
    codebook = CodebookModel.load(Codebook(date=date).output().path)
    counts, data = run_counts(Histograms(date=date).output().path, codebook, result["ids"], result["attrs"])
    evaluated = "evaluation" in run or "scores" in run.get("verdicts", {})
    scores = read_json(Evaluate(date=date).output().path) if evaluated else None  # this run evaluated
    recent = ()
    if "verdicts" in run:
        recent = html_report.recent_verdicts(load_verdicts(Verdicts(date=date).output().path)[0])
    groups = None
    if "copies" in run:
        path = Copies(date=date).output().path
        groups = (load_copies(path)[0], read_attrs(path))
    html_report.write_report(
        os.path.join(config.paths().artifacts, "report.html"),
        run,
        result,
        counts,
        data,
        inventory.paths(result["ids"], config.paths().content),
        sample=config.report().sample,
        named=[s.strip() for s in show.split(",") if s.strip()],
        evaluation=scores,
        recent=recent,
        copies=groups,
        processes=config.images().decode_processes,
        timeout=config.images().decode_timeout,
        max_pixels=config.images().max_pixels,
    )


class Report(RunTask):
    """``luigi --module tasks Report --local-scheduler [--show ID,ID]``: the visual report of the
    run of ``--date`` again, showing the images of the given IDs first."""

    show = luigi.Parameter(default="", significant=False, description="Database IDs shown first, comma-separated.")
    sections = ("images", "report")

    def requires(self):
        return Nightly(**self.run_args())

    def output(self):
        return Asked()

    def run(self):
        with artifacts_writable():
            visual_report(self.date, read_json(self.input().path), self.show)


#: The dates whose run failed in this process: a stage whose input was undone by that failure
#: (Luigi's "Unfulfilled dependency at run time") does not hide its reason in the report.
_FAILED = set()


@RunTask.event_handler(luigi.Event.FAILURE)
def report_failure(task, exception):
    """A failed stage leaves a report with status failed, the stage and the one-line reason."""
    if str(exception).startswith("Unfulfilled dependency at run time") and task.date in _FAILED:
        return
    _FAILED.add(task.date)
    publish_failure(task, f"{type(exception).__name__}: {str(exception).splitlines()[0] if str(exception) else ''}")


@RunInput.event_handler(luigi.Event.DEPENDENCY_MISSING)
def report_missing_input(task):
    """A missing input (exit code 20) leaves a failed report naming the setting and the fix."""
    message = task.missing_message()
    logger.error("missing input: %s", message)
    publish_failure(task, f"MissingInput: {message}")


def publish_failure(task, error):
    date = task.date.isoformat()
    previous = read_json(os.path.join(config.paths().artifacts, "runs", date, "run_report.json")) or {}
    report = {
        "date": date,
        "status": "failed",
        "started": previous.get("started", now()),
        "finished": now(),
        "failed_stage": task.task_family,
        "error": error,
    }
    try:
        publish_report(config.paths().artifacts, date, report)
    except OSError as exc:  # the storage that failed the run may not take the report either
        logger.error(
            "the failed run's report could not be written (%s): %s", os.strerror(exc.errno or 0), report["error"]
        )
