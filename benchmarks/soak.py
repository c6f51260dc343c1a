"""A month of nights under random faults: a seeded simulation of a site, night after night, that
checks after every night that nothing was lost.

    python -m benchmarks.soak [--nights 200] [--seed 0] [--images 18] [--record]

Each night draws from the seed, as a site meets them:

- changes to the collection: images added (altered copies of the base photos, new IDs),
  replaced in place, renamed, removed within ``[collection] max_removed``, broken files, whole
  records added, and records withdrawn past the guard (then restored, or confirmed with
  ``--collection-allow-removals``);
- curators' verdicts added, changed and withdrawn (``pipeline.verdicts``' writers, as the web
  app and the verdict command call them);
- faults: the process killed (SIGKILL, a separate process) as a random stage starts; an artifact
  damaged (truncated, zeroed, deleted, filled with other bytes); the verdict file gone (a volume
  that did not mount; then back, or every verdict withdrawn and confirmed with
  ``--verdicts-allow-empty``); verdicts written while the night runs (as it starts, read that
  night, or as it loads the CMS, read the next); a second run started while the first holds the
  folder; a full disk as the night writes (the artifacts on a tmpfs of their own, where one can
  be mounted: as root; elsewhere that fault is not drawn, and the figures say so); the verdict
  file unreadable (its name taken by a folder: root reads any file whatever its mode); the CMS's
  server not answering for a run (a URL where none listens).

A night ends when a run succeeds: a failure must exit with the documented code and a one-line
reason, and leave the CMS as it was (or with the night's lists whole, where only the run report
failed after the load); the scheduler's next run follows. After every night that
succeeds, the invariants:

- ``similarities.hdf5`` equals, array for array, a run from scratch (a fresh artifacts folder
  with the night's reducer and codebook) on the same collection, settings and verdicts;
- the CMS's lists equal ``similarities.hdf5``, and its copies table ``copies.csv``;
- every verdict in force is honoured (a pair judged wrong in neither list, right in both);
- no temporary file and no run lock remain;
- the run report counts the images and the rejected files the simulation put there.

Runs use the tiny stand-in model (``tests.faults``): ResNet50 is not the point here. A failing
seed reproduces exactly: ``--seed S --nights N`` draws the same nights.
"""

import argparse
import collections
import contextlib
import csv
import datetime
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline import backends, demo, runlock, verdicts
from pipeline.copies import read_copies
from pipeline.output import read_similarities

from .common import add_record_option, recording, report

#: The base photos of the simulated collection (each with two altered copies in other records).
BASES = demo.BASES[:6]
#: The artifacts a fault may damage (besides a feature chunk), and the ways it damages them.
DAMAGED = ("inventory.h5", "features.h5", "reducer.h5", "codebook.h5", "histograms.h5", "similarities.hdf5")
DAMAGE = ("truncated", "zeroed", "deleted", "garbage")
#: The stages a kill may hit as they start.
KILLED_AT = ("Inventory", "FeatureShard", "Features", "Histograms", "Neighbours", "Similarities", "LoadSimilarities")
#: Exit codes of the runs (luigi.cfg [retcode]).
OK, RUNNING, MISSING, FAILED = 0, 10, 20, 30
FIRST_DATE = datetime.date(2027, 1, 1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Violation(AssertionError):
    """An invariant that did not hold after a night."""


class Site:
    """A site's collection, CMS (SQLite) and verdict file under ``root``, its settings in ``luigi.cfg``."""

    def __init__(self, root, seed):
        self.root = root
        self.content = os.path.join(root, "content")
        self.artifacts = os.path.join(root, "artifacts")
        self.rng = np.random.default_rng(seed)
        os.makedirs(self.content)
        demo.make_collection(self.content, seed=seed, bases=BASES, variants_per_base=2, n_records=4)
        self.bases = [demo.base_image(name) for name in BASES]
        self.verdict_csv = os.path.join(root, "verdicts.csv")
        self.cms = os.path.join(root, "cms.sqlite")
        # the artifacts on a disk of their own where one can be mounted (root), for the full disk
        os.makedirs(self.artifacts)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", self.artifacts], capture_output=True
        )
        self.small_disk = mounted.returncode == 0
        self.config = self.write_config(root, self.artifacts)
        self.next_id = 50_000
        self.broken = set()  # (ppn, filename) of the files written broken on purpose
        self.verdicts = {}  # frozenset pair -> "wrong" / "right", as the simulation wrote them
        self.read_rows = 0  # the verdict rows the last night read

    def write_config(self, root, artifacts, verdict_csv=None, cms_url=None):
        sections = {
            "paths": {"content": self.content, "artifacts": artifacts},
            "ids": {"csv": self.mapping_path},
            "resnet": {"weights": "random", "batch_size": 4, "precision": "float32"},
            "images": {"decode_processes": 1},
            "progress": {"interval": 0},
            "selfcheck": {"sample": 0},
            "neighbours": {"rerank": "off"},
            "copies": {"threshold": 0.35},
            "report": {"sample": 2},
            "cms": {"url": cms_url or f"sqlite:///{self.cms}", "copies_table": "image_copies"},
            "verdicts": {"csv": verdict_csv or self.verdict_csv},
            "retcode": {"already_running": 10, "missing_data": 20, "task_failed": 30, "unhandled_exception": 40},
        }
        path = os.path.join(root, "luigi.cfg")
        with open(path, "w") as f:
            for section, values in sections.items():
                f.write(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
        return path

    def close(self):
        if self.small_disk:
            subprocess.run(["umount", "-l", self.artifacts], check=True)

    @property
    def mapping_path(self):
        return os.path.join(self.content, "image_ids.csv")

    def mapping(self):
        """{id: (ppn, filename)} of the mapping's rows."""
        with open(self.mapping_path, newline="") as f:
            return {int(r["id"]): (r["ppn"], r["filename"]) for r in csv.DictReader(f)}

    def write_mapping(self, rows):
        with open(self.mapping_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "ppn", "filename"])
            writer.writerows((i, p, n) for i, (p, n) in sorted(rows.items()))

    def on_disk(self):
        """{id: (ppn, filename)} of the mapped files that exist."""
        return {i: pf for i, pf in self.mapping().items() if os.path.isfile(os.path.join(self.content, *pf))}

    def records(self):
        return sorted(n for n in os.listdir(self.content) if n.startswith("PPN"))

    # the collection's changes ------------------------------------------------------------

    def new_image(self, ppn, name=None, broken=False):
        os.makedirs(os.path.join(self.content, ppn), exist_ok=True)
        self.next_id += 1
        name = name or f"n{self.next_id}.jpg"
        path = os.path.join(self.content, ppn, name)
        if broken:
            with open(path, "wb") as f:
                f.write(self.rng.bytes(int(self.rng.integers(0, 3000))))
            self.broken.add((ppn, name))
        else:
            self.photo().save(path, "JPEG", quality=85)
        rows = self.mapping()
        rows[self.next_id] = (ppn, name)
        self.write_mapping(rows)
        return self.next_id

    def photo(self):
        base = self.bases[int(self.rng.integers(len(self.bases)))]
        kind = demo.VARIANTS[int(self.rng.integers(len(demo.VARIANTS)))]
        return demo.make_variant(base, kind, self.rng).convert("RGB")

    def good_images(self):
        return [i for i, pf in sorted(self.on_disk().items()) if pf not in self.broken]

    def change(self, counts):
        """Draw tonight's changes to the collection (within the removal guard)."""
        rng, records = self.rng, self.records()
        for _ in range(int(rng.integers(0, 3))):
            self.new_image(records[int(rng.integers(len(records)))])
            counts["images added"] += 1
        good = self.good_images()
        if good and rng.random() < 0.5:  # replaced in place: a rescan
            i = good[int(rng.integers(len(good)))]
            self.photo().save(os.path.join(self.content, *self.mapping()[i]), "JPEG", quality=80)
            counts["images replaced"] += 1
        # a renamed file's old path is gone, as a removed one's: one of the two a night keeps
        # within max_removed (5 %, rounded up) on a collection of about 20 images
        moved = rng.random()
        if good and moved < 0.3:  # renamed: the mapping follows
            i = good[int(rng.integers(len(good)))]
            ppn, name = self.mapping()[i]
            new = f"r{self.next_id}-{name}"
            self.next_id += 1
            os.rename(os.path.join(self.content, ppn, name), os.path.join(self.content, ppn, new))
            rows = self.mapping()
            rows[i] = (ppn, new)
            self.write_mapping(rows)
            counts["images renamed"] += 1
        elif len(good) > 12 and moved < 0.6:  # one removed
            i = good[int(rng.integers(len(good)))]
            rows = self.mapping()
            os.remove(os.path.join(self.content, *rows.pop(i)))
            self.write_mapping(rows)
            counts["images removed"] += 1
        if rng.random() < 0.15:
            self.new_image(records[int(rng.integers(len(records)))], broken=True)
            counts["broken files"] += 1
        if rng.random() < 0.1:  # a whole record added
            ppn = f"PPN{700000000 + self.next_id}"
            for _ in range(int(rng.integers(2, 4))):
                self.new_image(ppn)
            counts["records added"] += 1

    def withdraw_records(self, last_night):
        """Remove the largest record folders, and their mapping rows, until more of the last
        night's ``last_night`` images are gone than ``[collection] max_removed`` (5 %) allows.
        Returns (the rows to put back, the folders moved aside)."""
        on_disk = self.on_disk()
        counts = collections.Counter(pf[0] for pf in on_disk.values())
        limit = math.ceil(0.05 * last_night)
        chosen = []
        for ppn in sorted(counts, key=lambda p: (-counts[p], p)):
            if sum(counts[p] for p in chosen) > limit:
                break
            chosen.append(ppn)
        rows, asides = self.mapping(), []
        for ppn in chosen:
            aside = os.path.join(self.root, "aside", ppn)
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            shutil.move(os.path.join(self.content, ppn), aside)
            asides.append(aside)
        gone = {i: pf for i, pf in rows.items() if pf[0] in chosen}
        self.write_mapping({i: pf for i, pf in rows.items() if pf[0] not in chosen})
        return gone, asides

    def restore_records(self, gone, asides):
        for aside in asides:
            shutil.move(aside, os.path.join(self.content, os.path.basename(aside)))
        rows = self.mapping()
        rows.update(gone)
        self.write_mapping(rows)

    # curators' verdicts ------------------------------------------------------------------

    def judge(self, counts, date):
        """Draw tonight's verdicts on the pairs of the last lists, written as the web app writes them."""
        lists = self.lists()
        if not lists:
            return
        rng = self.rng
        ids = sorted(lists)
        when = datetime.datetime.combine(date - datetime.timedelta(days=1), datetime.time(12), datetime.UTC)
        for n in range(int(rng.integers(0, 3))):
            a = ids[int(rng.integers(len(ids)))]
            if rng.random() < 0.7:  # a listed pair judged wrong
                b, verdict = lists[a][int(rng.integers(len(lists[a])))], "wrong"
            else:  # a pair from outside the list judged right
                b, verdict = ids[int(rng.integers(len(ids)))], "right"
                if b == a or b in lists[a]:
                    continue
            verdicts.add_to_csv(self.verdict_csv, a, b, verdict, "soak", time=when + datetime.timedelta(minutes=n))
            self.verdicts[frozenset((a, b))] = verdict
            counts[f"verdicts {verdict}"] += 1
        if self.verdicts and rng.random() < 0.3:
            pair = sorted(self.verdicts, key=sorted)[int(rng.integers(len(self.verdicts)))]
            verdicts.withdraw_from_csv(self.verdict_csv, *sorted(pair))
            del self.verdicts[pair]
            counts["verdicts withdrawn"] += 1

    # what the night left -----------------------------------------------------------------

    def lists(self):
        path = os.path.join(self.artifacts, "similarities.hdf5")
        if not os.path.exists(path):
            return {}
        with contextlib.suppress(OSError, KeyError):
            found = read_similarities(path)
            return {int(i): [int(n) for n in row if n >= 0] for i, row in zip(found["ids"], found["neighbours"])}
        return {}

    def cms_state(self):
        """The CMS's rows: its lists and its copies."""
        if not os.path.exists(self.cms):
            return None
        with sqlite3.connect(self.cms) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            lists = (
                sorted(db.execute("SELECT image_id, rank, similar_image_id, distance FROM image_similarity"))
                if "image_similarity" in tables
                else []
            )
            copies = (
                sorted(db.execute("SELECT copy_group, image_id FROM image_copies")) if "image_copies" in tables else []
            )
        return lists, copies


def damage(path, kind, rng):
    if kind == "deleted":
        os.remove(path)
        return
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if kind == "truncated":
            f.truncate(int(rng.integers(0, max(1, size // 2))))
        elif kind == "zeroed":
            f.write(b"\0" * size)
        else:
            f.write(rng.bytes(size))


class Runner:
    """The ``luigi`` command on the site: in this process (fast), or as a process of its own
    where it must be killed or held."""

    def __init__(self, site):
        self.site = site
        import tests.faults  # noqa: F401 (its event hooks; inert without the FAULT_ variables)

        self.tiny = tests.faults.TinyBackend

    def run(self, date, *flags, config=None, task="Nightly"):
        """Exit code of one run in this process."""
        import luigi
        from luigi.configuration import LuigiConfigParser
        from luigi.retcodes import run_with_retcodes

        kept = LuigiConfigParser._instance, LuigiConfigParser._config_paths, backends.BACKENDS["keras"]
        LuigiConfigParser._instance = None
        LuigiConfigParser._config_paths = [config or self.site.config]
        luigi.task_register.Register.clear_instance_cache()
        backends.BACKENDS["keras"] = self.tiny
        argv = ["--module", "tasks", task, "--local-scheduler", "--no-lock", "--date", date.isoformat(), *flags]
        try:
            with contextlib.redirect_stdout(sys.stderr):
                run_with_retcodes([*argv, "--log-level", "CRITICAL"])
        except SystemExit as done:
            return int(done.code or 0)
        finally:
            runlock.release_all()  # as the command's process does when it ends
            LuigiConfigParser._instance, LuigiConfigParser._config_paths, backends.BACKENDS["keras"] = kept
            luigi.task_register.Register.clear_instance_cache()
        return 0

    def process(self, date, **env):
        """A run as a process of its own, with the FAULT_ variables ``env`` (tests.faults)."""
        luigi_bin = os.path.join(os.path.dirname(sys.executable), "luigi")
        environment = {
            **os.environ,
            "LUIGI_CONFIG_PATH": self.site.config,
            "FAULT_TINY_MODEL": "1",
            "PYTHONPATH": ROOT,
            **env,
        }
        argv = [luigi_bin, "--module", "tests.faults", "Nightly", "--local-scheduler", "--no-lock"]
        self.log = os.path.join(self.site.root, f"process-{date}.log")
        with open(self.log, "w") as log:
            return subprocess.Popen(
                [*argv, "--date", date.isoformat(), "--log-level", "ERROR"],
                env=environment,
                stdout=log,
                stderr=log,
                cwd=self.site.root,  # Luigi reads a luigi.cfg of the working directory too: the site's own
            )


def run_report(site):
    with open(os.path.join(site.artifacts, "run_report.json")) as f:
        return json.load(f)


@contextlib.contextmanager
def held(runner, date, stage):
    """A run in a process of its own, held as ``stage`` starts while the block runs, then let go;
    yields a dict: ``paused`` (whether it got to ``stage``), and ``code``, its exit code, once it
    has ended."""
    hold = os.path.join(runner.site.root, f"hold-{date}")
    process = runner.process(date, FAULT_PAUSE_AT=f"{stage}:{hold}")
    deadline = time.monotonic() + 120
    while not os.path.exists(hold + ".paused") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = {"paused": os.path.exists(hold + ".paused")}
    try:
        yield ended
    finally:
        open(hold, "w").close()
        ended["code"] = process.wait(timeout=600)
        for name in (hold, hold + ".paused"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def list_rows(found):
    """The CMS's rows (image, rank, similar image, distance) of a similarities.hdf5 as read."""
    return sorted(
        (int(i), r + 1, int(n), d)
        for i, row, dist in zip(found["ids"], found["neighbours"], found["distances"])
        for r, (n, d) in enumerate(zip(row, dist))
        if n >= 0
    )


def cms_unchanged_or_whole(site, cms_before):
    """Whether the CMS is as it was, or holds the night's lists whole: a night whose last step,
    the run report, fails after the load (a full disk) has loaded them in one transaction."""
    now = site.cms_state()
    if now == cms_before:
        return True
    found = read_similarities(os.path.join(site.artifacts, "similarities.hdf5"))
    return [r[:3] for r in now[0]] == [r[:3] for r in list_rows(found)]


def check_failure(site, code, expected, cms_before):
    """A failed run: the documented exit code, one line of reason, the CMS as it was."""
    if code != expected:
        raise Violation(f"exit {code}, expected {expected}")
    # a run stopped by another's claim touches nothing, the run report included: its line is on stderr
    error = "stopped by the other run's claim" if code == RUNNING else str(run_report(site).get("error", ""))
    if not error or "\n" in error:
        raise Violation(f"the failed run's reason is not one line: {error!r}")
    if site.cms_state() != cms_before:
        raise Violation("a failed run changed the CMS")


def check_night(site, runner, date, scratch, read=None):
    """The invariants after a night that succeeded; raises Violation. ``read``: (the verdict file
    as the night read it, the verdicts in force then) when verdicts were written after it read them."""
    verdict_csv, in_force = read or (None, site.verdicts)
    found = read_similarities(os.path.join(site.artifacts, "similarities.hdf5"))
    # a run from scratch: the night's reducer and codebook (a kept fit), everything else made anew
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(os.path.join(scratch, "artifacts"))
    for name in ("reducer.h5", "codebook.h5"):
        shutil.copy2(os.path.join(site.artifacts, name), os.path.join(scratch, "artifacts", name))
    config = site.write_config(scratch, os.path.join(scratch, "artifacts"), verdict_csv)
    code = runner.run(date, config=config, task="Similarities")
    if code != OK:
        raise Violation(f"the run from scratch failed: exit {code}")
    fresh = read_similarities(os.path.join(scratch, "artifacts", "similarities.hdf5"))
    for key in ("ids", "neighbours", "distances"):
        if not np.array_equal(found[key], fresh[key]):
            raise Violation(f"similarities.hdf5 {key} differ from a run from scratch")
    lists, copies = site.cms_state()
    expected = list_rows(found)
    if [(a, b, c) for a, b, c, _ in lists] != [(a, b, c) for a, b, c, _ in expected]:
        raise Violation("the CMS's lists differ from similarities.hdf5")
    if not np.allclose([d for *_, d in lists], [d for *_, d in expected]):
        raise Violation("the CMS's distances differ from similarities.hdf5")
    groups = read_copies(os.path.join(site.artifacts, "copies.csv"))
    if sorted((int(g), int(i)) for g, i in groups[["group", "image_id"]].values) != copies:
        raise Violation("the CMS's copies differ from copies.csv")
    listed = {int(i): {int(n) for n in row if n >= 0} for i, row in zip(found["ids"], found["neighbours"])}
    for pair, verdict in in_force.items():
        a, b = sorted(pair)
        if a not in listed or b not in listed:
            continue  # an image gone: the verdict waits
        if verdict == "wrong" and (b in listed[a] or a in listed[b]):
            raise Violation(f"the pair {a}, {b} judged wrong is listed")
        if verdict == "right" and (b not in listed[a] or a not in listed[b]):
            raise Violation(f"the pair {a}, {b} judged right is not in both lists")
    for folder, _, names in os.walk(site.artifacts):
        left = [n for n in names if n.endswith(".tmp") or n == "run.lock"]
        if left:
            raise Violation(f"left behind: {os.path.join(folder, left[0])}")
    counted = run_report(site)
    on_disk = site.on_disk()
    broken = sum(pf in site.broken for pf in on_disk.values())
    if counted.get("status") != "ok" or counted.get("images_total") != len(on_disk):
        raise Violation(f"the run report counts {counted.get('images_total')} images, {len(on_disk)} are mapped")
    if len(counted.get("rejected", [])) != broken:
        raise Violation(f"the run report lists {len(counted.get('rejected', []))} rejected files, {broken} are broken")


def night(site, runner, date, faults, counts, failed, scratch):
    """One simulated night: changes, verdicts, one fault or none, and the runs a scheduler makes
    until one succeeds; then the invariants. Returns the runs it took."""
    rng = site.rng
    last_night = len(site.on_disk())  # the images the last night had (changes are made after this)
    site.change(counts)
    site.judge(counts, date)
    cms_before = site.cms_state()
    fault = faults[int(rng.integers(len(faults)))] if faults and rng.random() < 0.6 else None
    runs, confirm, read = 0, [], None
    if fault in ("verdicts gone", "verdicts unreadable") and not os.path.exists(site.verdict_csv):
        fault = None  # none written yet: nothing to lose
    if fault == "verdicts gone" and not site.read_rows:
        fault = None  # the last night read none: nothing to lose
    if fault == "full disk" and not site.small_disk:
        fault = None
    if fault is not None:
        counts[f"fault: {fault}"] += 1
    if fault == "damage":
        chunks = os.path.join(site.artifacts, "features")
        names = [n for n in DAMAGED if os.path.exists(os.path.join(site.artifacts, n))]
        stores = [os.path.join(r, n) for r, _, files in os.walk(chunks) for n in files if r.endswith("chunks")]
        targets = [os.path.join(site.artifacts, n) for n in names] + sorted(stores)[:3]
        if targets:
            target, kind = targets[int(rng.integers(len(targets)))], DAMAGE[int(rng.integers(len(DAMAGE)))]
            damage(target, kind, rng)
            fault = f"damage ({os.path.relpath(target, site.artifacts)} {kind})"
    elif fault == "kill":
        stage = KILLED_AT[int(rng.integers(len(KILLED_AT)))]
        fault = f"kill (at {stage})"
        code = runner.process(date, FAULT_KILL_AT=stage).wait(timeout=600)
        runs += 1
        if code not in (-9, OK):
            with open(runner.log) as log:
                said = [line for line in log.read().splitlines() if "missing" in line.lower() or "(" in line]
            raise Violation(f"a run killed at {stage} ended with exit {code}: {' | '.join(said[-3:])}")
        if code == -9:
            counts["recoveries: killed run"] += 1
    elif fault == "verdicts gone":
        os.rename(site.verdict_csv, site.verdict_csv + ".unmounted")
        code = runner.run(date)
        runs += 1
        failed[code] += 1
        check_failure(site, code, MISSING, cms_before)
        if rng.random() < 0.5:
            os.rename(site.verdict_csv + ".unmounted", site.verdict_csv)  # mounted again
        else:  # every verdict withdrawn on purpose
            os.remove(site.verdict_csv + ".unmounted")
            site.verdicts.clear()
            confirm = ["--verdicts-allow-empty"]
        counts["recoveries: verdicts gone"] += 1
    elif fault == "verdicts unreadable":
        # the file's name taken by a folder (a mount point that did not mount): root reads any file
        os.rename(site.verdict_csv, site.verdict_csv + ".aside")
        os.mkdir(site.verdict_csv)
        code = runner.run(date)
        runs += 1
        failed[code] += 1
        check_failure(site, code, FAILED, cms_before)
        os.rmdir(site.verdict_csv)
        os.rename(site.verdict_csv + ".aside", site.verdict_csv)
        counts["recoveries: verdicts unreadable"] += 1
    elif fault == "CMS down":
        # the CMS's server not answering: its URL names a port where none listens, for one run
        site.write_config(site.root, site.artifacts, cms_url=DOWN)
        code = runner.run(date)
        runs += 1
        failed[code] += 1
        site.write_config(site.root, site.artifacts)
        check_failure(site, code, MISSING, cms_before)
        counts["recoveries: CMS down"] += 1
    elif fault == "record withdrawn":
        gone, aside = site.withdraw_records(last_night)
        code = runner.run(date)
        runs += 1
        failed[code] += 1
        check_failure(site, code, MISSING, cms_before)
        if rng.random() < 0.5:
            site.restore_records(gone, aside)  # the storage comes back
        else:
            for folder in aside:
                shutil.rmtree(folder)
            confirm = ["--collection-allow-removals"]
        counts["recoveries: removal guard"] += 1
    elif fault == "two runs":
        with held(runner, date, "Inventory") as first:
            code = runner.run(date)
            runs += 2
            if first["paused"]:
                failed[code] += 1
                check_failure(site, code, RUNNING, cms_before)
        if first["code"] != OK:
            raise Violation(f"the first of two runs ended with exit {first['code']}")
    elif fault == "verdicts while it runs":
        # written as the night starts (read tonight), or as it loads the CMS (read the next night)
        stage = ("Inventory", "LoadSimilarities")[int(rng.integers(2))]
        fault = f"verdicts while it runs (at {stage})"
        before = (site.verdict_csv + ".read", dict(site.verdicts))
        if os.path.exists(site.verdict_csv):
            shutil.copy2(site.verdict_csv, before[0])
        else:
            open(before[0], "w").close()
        with held(runner, date, stage) as run_:
            site.judge(counts, date)
        runs += 1
        if run_["code"] != OK:
            raise Violation(f"the night whose verdicts were written as it ran ended with exit {run_['code']}")
        read = before if stage == "LoadSimilarities" or not run_["paused"] else None  # after it read them
    elif fault == "full disk" and site.small_disk:
        free = os.statvfs(site.artifacts)
        filler = os.path.join(site.artifacts, "filler")
        with open(filler, "wb") as f:  # all but a few hundred kilobytes
            f.truncate(max(0, free.f_bavail * free.f_frsize - int(rng.integers(0, 400_000))))
            with contextlib.suppress(OSError):
                os.posix_fallocate(f.fileno(), 0, f.seek(0, os.SEEK_END))
        code = runner.process(date).wait(timeout=600)  # a process of its own: a crash would not stop the soak
        runs += 1
        os.remove(filler)
        if code not in (OK, FAILED):
            raise Violation(f"a night on a full disk ended with exit {code}")
        if code == FAILED:
            failed[code] += 1
            with open(runner.log) as log:
                said = [line for line in log.read().splitlines() if "No space left on device" in line]
            if not said:
                raise Violation("a night on a full disk did not say so")
            if not cms_unchanged_or_whole(site, cms_before):
                raise Violation("a night on a full disk left the CMS neither as it was nor with its lists whole")
            counts["recoveries: full disk"] += 1
    for _ in range(3):  # the scheduler's runs until one succeeds
        code = runner.run(date, *confirm)
        runs += 1
        if code == OK:
            break
        failed[code] += 1
        emptied = not site.verdicts and "holds no verdicts" in str(run_report(site).get("error"))
        if code == MISSING and emptied:  # the curators withdrew every verdict: the site confirms it
            check_failure(site, code, MISSING, cms_before)
            confirm = [*confirm, "--verdicts-allow-empty"]
            counts["recoveries: every verdict withdrawn"] += 1
    else:
        reason = run_report(site).get("error", "")
        raise Violation(f"three runs after the fault {fault} failed, the last with exit {code}: {reason}")
    check_night(site, runner, date, scratch, read)
    site.read_rows = len(verdicts.read_csv(read[0] if read else site.verdict_csv))  # what the night read
    return runs


#: The faults a night may draw. New ones go at the end: a seed draws the same nights from the faults before them.
FAULTS = (
    "kill",
    "damage",
    "verdicts gone",
    "record withdrawn",
    "two runs",
    "verdicts while it runs",
    "full disk",
    "verdicts unreadable",
    "CMS down",
)
#: A database server that does not answer: nothing listens on port 1.
DOWN = "postgresql+psycopg://soak@127.0.0.1:1/cms"


def run(nights=200, seed=0, faults=FAULTS, stop_at_first=True):
    """Simulate ``nights`` nights of a site from ``seed``; returns the figures (and raises
    Violation at the first invariant that fails, with ``stop_at_first``)."""
    counts, failed, violations = collections.Counter(), collections.Counter(), []
    started = time.perf_counter()
    runs = 0
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        site = Site(os.path.join(tmp, "site"), seed)
        runner = Runner(site)
        # a full disk needs a disk of its own: elsewhere a night that draws it has no fault (the
        # figures say so), and every other night draws what it draws on any machine
        drawn = tuple(f for f in faults if f != "full disk" or site.small_disk)
        try:
            for n in range(nights):
                date = FIRST_DATE + datetime.timedelta(days=n)
                try:
                    runs += night(site, runner, date, faults if n else (), counts, failed, os.path.join(tmp, "scratch"))
                except Violation as exc:
                    violations.append(f"seed {seed}, night {n + 1} ({date}): {exc}")
                    if stop_at_first:
                        raise Violation(violations[-1]) from None
                    break
        finally:
            site.close()
    return {
        "bench": "soak",
        "seed": seed,
        "nights": nights,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "changes": {k: v for k, v in sorted(counts.items()) if not k.startswith(("fault", "recoveries"))},
        "faults": {k.split(": ", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("fault")},
        "recoveries": {k.split(": ", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("recoveries")},
        "failed_runs_by_exit": {str(k): v for k, v in sorted(failed.items())},
        "not_drawn": sorted(set(faults) - set(drawn)),
        "violations": violations,
    }


def main(argv=None):
    parser = add_record_option(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--nights", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with recording("soak", args, argv):
        figures = run(args.nights, args.seed, stop_at_first=False)
        rows = [
            ("nights simulated", f"{figures['nights']} ({figures['runs']} runs, {figures['seconds']:.0f} s)"),
            ("changes", ", ".join(f"{k} {v}" for k, v in figures["changes"].items())),
            ("faults", ", ".join(f"{k} {v}" for k, v in figures["faults"].items()) or "none"),
            ("faults not drawn here", ", ".join(figures["not_drawn"]) or "none"),
            (
                "failed runs by exit code",
                ", ".join(f"{k}: {v}" for k, v in figures["failed_runs_by_exit"].items()) or "none",
            ),
            ("recoveries", ", ".join(f"{k} {v}" for k, v in figures["recoveries"].items()) or "none"),
            (
                "invariant violations",
                f"{len(figures['violations'])}" + "".join(f"; {v}" for v in figures["violations"]),
            ),
        ]
        report(rows, figures)
    return 1 if figures["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
