"""The histograms and neighbours of ``benchmarks.scale`` split into shards and run by worker
processes of one core each on a local Luigi central scheduler (``luigid``), as
HistogramShard and NeighbourShard run them: ``python -m benchmarks.scale --workers N``.

The tasks here call the library functions the pipeline's shards call (the assignment of one
shard's images by the stable hash of their paths, the exact search of one block of rows
against all, the gathers), on the simulated collection of ``benchmarks.scale``, whose
descriptors no feature store holds. Each task records when it started and finished; a
stage's time is from its first shard's start to its gather's end.
"""

import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time

import h5py
import luigi
import numpy as np

from pipeline import extraction, histograms, output
from pipeline.codebook import Codebook
from pipeline.neighbours import WeightedHistograms
from pipeline.reduction import Reducer
from pipeline.search import NightSearch

from .synthetic import SyntheticBlocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Each worker's threads: one core.
ONE_CORE = {name: "1" for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
K = 5


def image_paths(n):
    """The paths below content/ of the n simulated images: what their shard is hashed from."""
    return np.array([f"PPN{i // 10}/{i:08d}.jpg" for i in range(n)])


class Part(luigi.Task):
    """A task of the benchmark writing ``<folder>/<name>.h5`` with its start and end times."""

    folder = luigi.Parameter()
    images = luigi.IntParameter()
    rank = luigi.IntParameter()
    shards = luigi.IntParameter()

    def output(self):
        return luigi.LocalTarget(os.path.join(self.folder, f"{self.name()}.h5"), format=luigi.format.Nop)

    def common(self):
        return {"folder": self.folder, "images": self.images, "rank": self.rank, "shards": self.shards}

    def run(self):
        started = time.time()
        with self.output().temporary_path() as tmp:
            self.make(tmp, started)

    def times(self, started):
        return {"started": started, "finished": time.time(), "pid": os.getpid()}


class HistogramPart(Part):
    shard = luigi.IntParameter()

    def name(self):
        return f"histograms-{self.shard}"

    def make(self, tmp, started):
        keys = image_paths(self.images)
        mine = extraction.in_shard(keys, self.shard, self.shards)
        reducer, codebook = (
            Reducer.load(os.path.join(self.folder, "reducer.h5")),
            Codebook.load(os.path.join(self.folder, "codebook.h5")),
        )
        blocks = SyntheticBlocks(self.images, rank=self.rank).subset(mine)
        counts, _ = histograms.compute_histograms(blocks, keys[mine], reducer, codebook)
        histograms.save_histograms(tmp, keys[mine], counts, 49, self.times(started))


class AllHistograms(Part):
    def name(self):
        return "histograms"

    def requires(self):
        return [HistogramPart(**self.common(), shard=i) for i in range(self.shards)]

    def make(self, tmp, started):
        keys = image_paths(self.images)
        parts = [histograms.load_counts(t.path)[:2] for t in self.input()]
        keys, counts = histograms.gather(keys, parts)
        histograms.save_histograms(tmp, keys, counts, 49, self.times(started))


_SEARCH = {}


def weighted(folder, path):
    """The weighted histograms of ``path``, read once per worker process (their inverted file with them)."""
    if path not in _SEARCH:
        _, counts, n_local = histograms.load_counts(path)
        codebook = Codebook.load(os.path.join(folder, "codebook.h5"))
        _SEARCH[path] = WeightedHistograms.from_codebook(counts, n_local, np.arange(counts.shape[0]), codebook)
    return _SEARCH[path]


class NeighbourPart(Part):
    shard = luigi.IntParameter()

    def name(self):
        return f"neighbours-{self.shard}"

    def requires(self):
        return AllHistograms(**self.common())

    def make(self, tmp, started):
        data = weighted(self.folder, self.input().path)
        rows = output.block_rows(len(data), self.shard, self.shards)
        lists = NightSearch(data, K, why_full="the benchmark's full search").lists(rows)
        output.write_neighbours(tmp, lists, self.times(started))


class AllNeighbours(Part):
    def name(self):
        return "neighbours"

    def requires(self):
        return [NeighbourPart(**self.common(), shard=i) for i in range(self.shards)]

    def make(self, tmp, started):
        nearest, distances, *_ = output.gather_neighbours([t.path for t in self.input()], self.images, K)
        with h5py.File(tmp, "w") as f:
            f.attrs.update(self.times(started))
            f.create_dataset("neighbours", data=nearest)
            f.create_dataset("distances", data=distances)


def log_path(folder, worker):
    return os.path.join(folder, f"worker-{worker}.log")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(folder, name):
    with h5py.File(os.path.join(folder, f"{name}.h5"), "r") as f:
        return dict(f.attrs), {key: f[key][:] for key in f if key in ("neighbours", "distances")}


def run_sharded(folder, images, rank, workers, shards):
    """The sharded histograms and neighbours of the collection whose reducer.h5 and codebook.h5
    are in ``folder``, by ``workers`` worker processes of one core each on a new luigid.

    Returns
    -------
    figures : dict
        Seconds of the histograms and of the neighbours (first shard started to gather
        finished), and how many distinct worker processes ran shards.
    result : dict
        The gathered neighbours and distances.
    """
    port, bin_dir = _free_port(), os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory(prefix="luigid-") as state:
        config = os.path.join(state, "luigid.cfg")
        with open(config, "w") as f:
            # a failed part is a fault of the benchmark: disabled at once, so the workers end and say why
            f.write(f"[scheduler]\nstate_path = {os.path.join(state, 'state.pickle')}\nretry_count = 1\n")
        luigid = subprocess.Popen(
            [os.path.join(bin_dir, "luigid"), "--port", str(port), "--logdir", state],
            env={**os.environ, "LUIGI_CONFIG_PATH": config}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for(port, luigid)
            cores = sorted(os.sched_getaffinity(0))
            command = [
                os.path.join(bin_dir, "luigi"), "--module", "benchmarks.shards", "AllNeighbours", "--folder", folder,
                "--images", str(images), "--rank", str(rank), "--shards", str(shards),
                "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--workers", "1",
                "--worker-keep-alive", "--no-lock",
            ]  # fmt: skip
            with contextlib.ExitStack() as logs:
                processes = [
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env={**os.environ, **ONE_CORE, "LUIGI_CONFIG_PATH": config},
                        preexec_fn=functools.partial(os.sched_setaffinity, 0, {cores[w % len(cores)]}),
                        stdout=subprocess.DEVNULL,
                        stderr=logs.enter_context(open(log_path(folder, w), "w")),
                    )  # fmt: skip
                    for w in range(workers)
                ]
                for process in processes:
                    process.wait()
        finally:
            luigid.terminate()
            luigid.wait(30)
    if not os.path.exists(os.path.join(folder, "neighbours.h5")):
        tail = "".join(open(log_path(folder, w)).read()[-2000:] for w in range(workers))
        raise RuntimeError(f"the sharded stages did not finish; the workers' logs end with:\n{tail}")
    parts = {
        name: _read(folder, name)[0]
        for name in [f"{kind}-{i}" for kind in ("histograms", "neighbours") for i in range(shards)]
    }
    gathered = {name: _read(folder, name) for name in ("histograms", "neighbours")}
    figures = {}
    for kind in ("histograms", "neighbours"):
        first = min(a["started"] for name, a in parts.items() if name.startswith(kind))
        figures[f"{kind}_seconds"] = round(gathered[kind][0]["finished"] - first, 1)
    figures["worker_processes"] = len({a["pid"] for a in parts.values()})
    return figures, gathered["neighbours"][1]


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
