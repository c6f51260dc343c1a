"""The pipeline's own sharded stages (HistogramShard and Histograms, NeighbourShard and
Similarities) on a simulated collection, run by 1 worker process of one core and then by N
on a local Luigi central scheduler (``luigid``), side by side: ``python -m benchmarks.scale
--workers N``.

The collection is a real content folder (small files that are never decoded) with its ID
mapping, taken in by the real Inventory task. Its feature store holds synthetic descriptors
(:mod:`benchmarks.synthetic`, no extraction here can make that many), written as the
extraction writes them. The feature shards (nothing left to extract), the reducer and the
codebook then run as the real tasks of one night; the histograms and the neighbours are made
again for each number of workers. A stage's time runs from its first shard's start to its
gather's end (the artifacts' own times).
"""

import contextlib
import csv
import functools
import glob
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline import collection
from pipeline.h5io import read_attrs
from pipeline.output import read_similarities

from .common import free_port
from .synthetic import SyntheticBlocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
#: Each worker's threads: one core.
ONE_CORE = {name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
#: A worker's exit status when other workers ran some of the tasks it had scheduled (luigi.cfg's
#: already_running, docs/operations.md).
ALREADY_RUNNING = 10
#: Images written to the feature store per chunk.
CHUNK = 256


def write_collection(folder, images):
    """``images`` small files in record folders of 10, and their ID mapping; the content folder."""
    content = os.path.join(folder, "content")
    rows = []
    for i in range(images):
        ppn, name = f"PPN{i // 10:07d}", f"{i:08d}.jpg"
        os.makedirs(os.path.join(content, ppn), exist_ok=True)
        with open(os.path.join(content, ppn, name), "wb") as f:
            f.write(i.to_bytes(4, "little"))  # never decoded: the store has its descriptors
        rows.append((i + 1, ppn, name))
    with open(os.path.join(content, "image_ids.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "ppn", "filename"])
        writer.writerows(rows)
    return content


def write_config(folder, content, words, sample_images, sample_size, shards):
    path = os.path.join(folder, "luigi.cfg")
    sections = {
        "paths": {"content": content, "artifacts": os.path.join(folder, "artifacts")},
        "ids": {"source": "csv", "csv": os.path.join(content, "image_ids.csv")},
        "resnet": {"weights": "random", "precision": "float32"},
        "reduction": {"sample_images": sample_images},
        "codebook": {"size": words, "sample_size": sample_size},
        "histograms": {"shards": shards},
        "neighbours": {"shards": shards},
        "selfcheck": {"sample": 0},
        "copies": {"threshold": "off"},
        "retcode": {
            "already_running": ALREADY_RUNNING,
            "missing_data": 20,
            "task_failed": 30,
            "unhandled_exception": 40,
        },
    }
    with open(path, "w") as f:
        for section, values in sections.items():
            f.write(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()))
    return path


def luigi_run(config, task, *args, env=None, **popen):
    """``luigi --module tasks <task>`` with ``config`` (a luigi.cfg), as a night runs it."""
    environment = {**os.environ, **(env or {}), "LUIGI_CONFIG_PATH": config, "PYTHONPATH": ROOT}
    # run in the benchmark's folder: no luigi.cfg but the benchmark's own is read
    return subprocess.Popen(
        [os.path.join(BIN, "luigi"), "--module", "tasks", task, *args],
        cwd=os.path.dirname(config),
        env=environment,
        **popen,
    )


def _checked(process, what, log, allowed=(0,)):
    if process.wait() not in allowed:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{what} failed (exit {process.returncode}); its log ends with:\n{tail}")


def fill_store(config, artifacts, rank):
    """The real Inventory task, then the synthetic descriptors of its images written into the
    run's feature store as the extraction writes them (chunks of 8-bit codes)."""
    log = os.path.join(os.path.dirname(config), "inventory.log")
    with open(log, "w") as f:
        _checked(luigi_run(config, "Inventory", "--local-scheduler", stdout=f, stderr=f), "the inventory", log)
    from luigi.configuration import LuigiConfigParser

    from tasks.extraction import feature_settings, feature_store

    LuigiConfigParser._instance, LuigiConfigParser._config_paths = None, [config]  # this run's settings
    files = collection.load_inventory(os.path.join(artifacts, "inventory.h5")).files
    store = feature_store(feature_settings())
    # the descriptors follow each image's number, whatever order the inventory lists them in
    numbers = np.array([int(os.path.splitext(f.filename)[0]) for f in files])
    blocks = SyntheticBlocks(len(files), rank=rank)
    for start in range(0, len(files), CHUNK):
        part = slice(start, start + CHUNK)
        store.write_chunk([f.key for f in files[part]], blocks.read(numbers[part]).astype(np.float32), {})
    LuigiConfigParser._instance = None


def _wait_for(port, process, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"luigid did not start on port {port}") from None
            time.sleep(0.2)


def stage_seconds(artifacts, kind, gathered):
    """From the first of ``kind``'s shards starting to ``gathered`` being written."""
    shards = glob.glob(os.path.join(artifacts, "shards", f"{kind}-*.h5"))
    first = min(os.stat(p).st_mtime - read_attrs(p)["seconds"] for p in shards)
    return os.stat(os.path.join(artifacts, gathered)).st_mtime - first


def run_workers(config, artifacts, workers):
    """Similarities by ``workers`` worker processes of one core each on a new luigid, the
    histograms and neighbours made again. Returns the seconds of each stage."""
    for path in glob.glob(os.path.join(artifacts, "shards", "histograms-*")) + glob.glob(
        os.path.join(artifacts, "shards", "neighbours-*")
    ):
        os.remove(path)
    for name in ("histograms.h5", "similarities.hdf5"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(artifacts, name))
    port, folder = free_port(), os.path.dirname(config)
    with tempfile.TemporaryDirectory(prefix="luigid-") as state:
        scheduler = os.path.join(state, "luigid.cfg")
        with open(scheduler, "w") as f:  # a failed shard is the benchmark's fault: the workers end and say why
            f.write(f"[scheduler]\nstate_path = {os.path.join(state, 'state.pickle')}\nretry_count = 1\n")
        luigid = subprocess.Popen(
            [os.path.join(BIN, "luigid"), "--port", str(port), "--logdir", state],
            env={**os.environ, "LUIGI_CONFIG_PATH": scheduler},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for(port, luigid)
            cores = sorted(os.sched_getaffinity(0))
            # as docs/operations.md runs a worker; --no-lock: Luigi's own lock admits one such
            # command line per machine, and these workers share one
            args = ("--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--workers", "1")
            args += ("--worker-keep-alive", "--no-lock")
            logs = [os.path.join(folder, f"worker-{workers}-{w}.log") for w in range(workers)]
            with contextlib.ExitStack() as stack:
                processes = [
                    luigi_run(
                        config,
                        "Similarities",
                        *args,
                        env=ONE_CORE,
                        stdout=subprocess.DEVNULL,
                        stderr=stack.enter_context(open(log, "w")),
                        preexec_fn=functools.partial(os.sched_setaffinity, 0, {cores[w % len(cores)]}),
                    )
                    for w, log in enumerate(logs)
                ]
                for process, log in zip(processes, logs):
                    _checked(process, f"a worker of {workers}", log, allowed=(0, ALREADY_RUNNING))
        finally:
            luigid.terminate()
            luigid.wait(30)
    if not os.path.exists(os.path.join(artifacts, "similarities.hdf5")):
        raise RuntimeError(f"the workers ended without similarities.hdf5; see {', '.join(logs)}")
    return {
        "histograms_seconds": round(stage_seconds(artifacts, "histograms", "histograms.h5"), 1),
        "neighbours_seconds": round(stage_seconds(artifacts, "neighbours", "similarities.hdf5"), 1),
    }


def run_sharded(folder, images, rank, words, sample_images, sample_size, workers, shards):
    """The night up to the codebook once, then the sharded histograms and neighbours by 1 worker
    and by ``workers``.

    Returns
    -------
    prepared : dict
        Seconds of the store's filling and of the night up to the codebook (one local worker).
    timed : dict of int to dict
        For 1 and ``workers`` workers, :func:`run_workers`'s figures.
    identical : bool
        Whether both gave the same similarities.hdf5, array for array.
    """
    content = write_collection(folder, images)
    config = write_config(folder, content, words, sample_images, sample_size, shards)
    artifacts = os.path.join(folder, "artifacts")
    started = time.perf_counter()
    fill_store(config, artifacts, rank)
    filled = time.perf_counter()
    log = os.path.join(folder, "codebook.log")
    with open(log, "w") as f:
        _checked(
            luigi_run(config, "Codebook", "--local-scheduler", stdout=f, stderr=f), "the night up to the codebook", log
        )
    prepared = {
        "store_seconds": round(filled - started, 1),
        "to_codebook_seconds": round(time.perf_counter() - filled, 1),
    }
    timed, results = {}, []
    for n in (1, workers):
        timed[n] = run_workers(config, artifacts, n)
        results.append(read_similarities(os.path.join(artifacts, "similarities.hdf5")))
    identical = all(np.array_equal(results[0][key], results[1][key]) for key in ("ids", "neighbours", "distances"))
    return prepared, timed, identical
