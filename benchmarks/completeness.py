"""What asking whether a finished night is complete costs: ``complete()`` of every task of the
night's graph, as Luigi asks it when a night is started again.

    python -m benchmarks.completeness [--images 1000000] [--record]

The night is made up: each stage of the shipped ``Nightly`` graph (no CMS) gets an artifact
of ``--images`` images whose record is the one the stage itself writes (its own
``record_fields``, so its identity is the task's own), with the IDs of that many images as
data. Nothing is extracted or searched; the tasks, their identities and their ``complete()``
are the pipeline's. Each question is asked of fresh task instances, as by a new process.
"""

import argparse
import os
import tempfile

import h5py
import luigi
import numpy as np

from .common import Timer, add_record_option, recording, report


def configure(root):
    """Luigi reads only ``root/luigi.cfg``: the shipped settings, artifacts under ``root``."""
    from luigi.configuration import LuigiConfigParser

    content = os.path.join(root, "content")
    os.makedirs(content, exist_ok=True)
    with open(os.path.join(content, "image_ids.csv"), "w") as f:
        f.write("id,ppn,filename\n")
    path = os.path.join(root, "luigi.cfg")
    with open(path, "w") as f:
        f.write(
            f"[paths]\ncontent = {content}\nartifacts = {os.path.join(root, 'artifacts')}\n"
            f"[ids]\ncsv = {os.path.join(content, 'image_ids.csv')}\n"
            "[resnet]\nweights = random\nprecision = float32\n"
        )
    LuigiConfigParser._instance = None
    LuigiConfigParser._config_paths = [path]
    luigi.task_register.Register.clear_instance_cache()


def make_night(images, date):
    """The artifacts of a finished night of ``images`` images, each recording what its stage records."""
    from pipeline.report import write_json
    from pipeline.thumbnails import record
    from tasks import Nightly, config
    from tasks.base import ArtifactTask, Stage, graph
    from tasks.checks import RunCheck
    from tasks.inputs import LastRun
    from tasks.thumbnails import Thumbnails

    ids = np.arange(images, dtype=np.int64)
    night = graph(Nightly(date=date))
    for task in night:
        if isinstance(task, LastRun):  # the previous night's files, kept as the night keeps them
            task.run()
    stages = [t for t in night if isinstance(t, Stage)]
    made = set()
    while len(made) < len(stages):  # each after the stages it is made from
        for task in stages:
            if task.task_id in made or any(t.task_id not in made for t in task.made_from()):
                continue
            task.found = "made up"  # what an observed stage found
            task._started = 0.0
            fields = task.record_fields(images=images)
            if isinstance(task, ArtifactTask):
                os.makedirs(os.path.dirname(task.output().path), exist_ok=True)
                with h5py.File(task.output().path, "w") as f:
                    f.attrs.update(fields)
                    f.create_dataset("ids", data=ids)
            elif isinstance(task, RunCheck):
                write_json(task.output().path, {"date": date.isoformat(), "digest": fields["digest"]})
            elif isinstance(task, Thumbnails):
                os.makedirs(os.path.dirname(config.view_store().path), exist_ok=True)
                record(config.view_store(), {"digest": fields["digest"]})
            made.add(task.task_id)
    return len(stages)


def ask(date):
    """Every task of the night's graph asked whether it is complete, by fresh instances: (tasks, seconds, all complete)."""
    from tasks import Nightly
    from tasks.base import graph

    luigi.task_register.Register.clear_instance_cache()
    with Timer() as timer:
        tasks = graph(Nightly(date=date))
        answers = [t.complete() for t in tasks if not isinstance(t, Nightly)]
    return len(tasks), timer.seconds, all(answers)


def run(images=1_000_000):
    import datetime

    date = datetime.date(2026, 1, 1)
    with tempfile.TemporaryDirectory(prefix="completeness-") as root:
        configure(root)
        with Timer() as making:
            stages = make_night(images, date)
        n, first, complete = ask(date)
        again = min(ask(date)[1] for _ in range(3))
    figures = {
        "images": images,
        "tasks": n,
        "stages": stages,
        "all_complete": complete,
        "complete_seconds": round(first, 3),
        "complete_seconds_best_of_3": round(again, 3),
        "made_up_night_seconds": round(making.seconds, 1),
    }
    report(
        [
            ("images", f"{images:,}"),
            ("tasks of the night's graph (stages with a record)", f"{n} ({stages})"),
            ("every task complete", complete),
            ("complete() of every task, fresh instances", f"{first:.3f} s (best of 3 more: {again:.3f} s)"),
        ],
        figures,
    )
    return figures


def main(argv=None):
    parser = add_record_option(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--images", type=int, default=1_000_000, help="images of the made-up night")
    args = parser.parse_args(argv)
    with recording("completeness", args, argv):
        run(args.images)


if __name__ == "__main__":
    main()
