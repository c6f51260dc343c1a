"""Helpers shared by the benchmarks: timing, peak memory, synthetic images, output."""

import json
import os
import resource
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


def report(rows, figures):
    """Print a small table of (what, value) rows, then the JSON line of the figures."""
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        print(f"{what:<{width}}  {value}")
    print(json.dumps(figures))
