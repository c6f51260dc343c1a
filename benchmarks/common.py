"""Helpers shared by the benchmarks: timing, peak memory, synthetic images, output."""

import json
import os
import resource
import time

import numpy as np
from PIL import Image


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
