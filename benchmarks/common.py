"""Helpers shared by the benchmarks: timing, peak memory, synthetic images, output, and the
machine-tagged records that ``--record`` appends to ``benchmarks/results/<bench>.jsonl``."""

import contextlib
import datetime
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StagePeak:
    """Peak resident memory of this process while a block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval=0.05):
        self.interval = interval

    def _rss_mb(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.mb = max(self.mb, self._rss_mb())

    def __enter__(self):
        self.mb = self._rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, self._rss_mb())


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def free_port():
    """A TCP port of 127.0.0.1 that no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scan_like_images(directory, n, seed=0, size=(1200, 900)):
    """Write ``n`` JPEGs of scan size made from the demo's sample photos (cropped, shifted)."""
    from pipeline.demo import BASES, base_image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = [base_image(name).resize(size, Image.Resampling.BILINEAR) for name in BASES[:6]]
    paths = []
    for i in range(n):
        image = bases[i % len(bases)]
        dx, dy = (int(v) for v in rng.integers(0, 60, size=2))
        path = os.path.join(directory, f"{i:06d}.jpg")
        image.crop((dx, dy, dx + size[0] - 60, dy + size[1] - 60)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where ``--record`` appends; docs/performance.md is generated from these files.
RESULTS = os.path.join(ROOT, "benchmarks", "results")
#: The /proc/cpuinfo flags that set the forward pass's speed; a record names those present.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
_reported = []


def report(rows, figures):
    """Print a small table of (what, value) rows, then the JSON line of the figures; a
    :func:`recording` block around the run keeps both for its record."""
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        print(f"{what:<{width}}  {value}")
    print(json.dumps(figures))
    _reported.append(([[what, str(value)] for what, value in rows], figures))


def machine():
    """The machine a figure comes from: CPU model, the flags that set its speed, cores usable."""
    from pipeline.precision import cpu_flags

    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    flags = cpu_flags()
    return {"cpu": model, "flags": [f for f in SPEED_FLAGS if f in flags], "cores": len(os.sched_getaffinity(0))}


def machine_name(tag):
    """One line for a machine tag: ``AMD EPYC (avx2, avx512_bf16), 2 cores``."""
    return f"{tag['cpu']} ({', '.join(tag['flags']) or 'no vector flags named'}), {tag['cores']} cores"


def commit():
    """The commit the benchmark ran at, ``+`` where the working tree differs from it (the records
    themselves aside)."""

    def git(*args):
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return head + ("+" if changed else "")


def add_record_option(parser):
    parser.add_argument(
        "--record",
        action="store_true",
        help="append the figures, tagged with this machine, date and commit, to benchmarks/results/<bench>.jsonl "
        "(then python -m benchmarks.performance writes docs/performance.md)",
    )
    return parser


@contextlib.contextmanager
def recording(bench, args, argv=None, results=None):
    """Keep what :func:`report` prints in the block; with ``args.record``, append it to
    ``<results>/<bench>.jsonl`` as one record: the command (``argv``, default the process's
    arguments), machine, date and commit (taken as the block starts: the code the process
    loaded, whatever is edited while it runs), the printed rows and the figures."""
    start, ran_at = len(_reported), commit() if args.record else None
    yield
    if not args.record:
        return
    argv = sys.argv[1:] if argv is None else list(argv)
    tables = _reported[start:]
    line = {
        "bench": bench,
        "command": " ".join(["python -m", f"benchmarks.{bench}", *(a for a in argv if a != "--record")]),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "commit": ran_at,
        "rows": [row for rows, _ in tables for row in rows],
        "figures": [figures for _, figures in tables],
    }
    results = results or RESULTS
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, f"{bench}.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")
