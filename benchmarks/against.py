"""The histograms stage side by side with another commit: ``compute_histograms`` on the same
synthetic images with the same reducer and codebook, timed in turn in this checkout and in a
git worktree of the other commit, and their words compared.

    python -m benchmarks.against REV [--images 2048] [--rounds 3] [--rank 256]

The reducer and codebook are fitted once, here, at the shipped settings (``fit_reducer``,
``fit_codebook`` on ``benchmarks.synthetic`` descriptors, as ``benchmarks.firstnight`` makes
them), saved, and loaded by each side. Each round runs both sides once, one after the other,
each in a fresh process on the same images; making the synthetic descriptors is timed apart
and taken off. The machine is shared: the ratio of the best rounds is the figure, not either
side's rate alone.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from pipeline.codebook import fit_codebook
from pipeline.reduction import fit_reducer
from pipeline.settings import Codebook, Histograms, Reduction

from .common import add_record_option, recording, report
from .synthetic import SyntheticBlocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What each side runs, with its own ``pipeline`` (its checkout first on the path). Only what
#: every commit of the histograms stage has: SyntheticBlocks, Reducer/Codebook.load and
#: compute_histograms.
SIDE = """
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from benchmarks.synthetic import SyntheticBlocks
from pipeline.codebook import Codebook
from pipeline.histograms import compute_histograms
from pipeline.reduction import Reducer

folder, name, images, rank, assign = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
made = [0.0]

class Timed(SyntheticBlocks):
    def read(self, positions):
        started = time.perf_counter()
        try:
            with threadpool_limits(1, "blas"):  # made alike on both sides, whatever their SyntheticBlocks
                return super().read(positions)
        finally:
            made[0] += time.perf_counter() - started

blocks = Timed(10**6, rank=rank, dtype=np.float32)
reducer, codebook = Reducer.load(folder + "/reducer.h5"), Codebook.load(folder + "/codebook.h5")
keys = np.array([f"image {i}" for i in range(images)])
compute_histograms(blocks, keys[:128], reducer, codebook, assign)  # compiled and warm
made[0] = 0.0
started = time.perf_counter()
_, _, words = compute_histograms(blocks, keys, reducer, codebook, assign)
seconds = time.perf_counter() - started - made[0]
np.save(f"{folder}/words-{name}.npy", words)
print(json.dumps({"seconds": seconds, "made": made[0]}))
"""


def side(root, folder, name, images, rank, assign):
    """Seconds of ``compute_histograms`` in checkout ``root``, the making taken off."""
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", SIDE, folder, name, str(images), str(rank), str(assign)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def run(against, images=2048, rounds=3, rank=256, sample_images=None, fitting=None):
    """Both sides' seconds, the reducer fitted on ``sample_images`` images (``[reduction]
    sample_images``) and the codebook at ``fitting`` (``[codebook]``): the shipped by default."""
    fitting, assign = fitting or Codebook(), Histograms().assign
    with tempfile.TemporaryDirectory() as tmp:
        blocks = SyntheticBlocks(10**6, rank=rank, dtype=np.float32)
        reducer = fit_reducer(blocks, sample_images_=sample_images or Reduction.sample_images)
        codebook = fit_codebook(blocks, reducer, fitting.size, fitting.sample_size, fitting.seed)
        reducer.save(os.path.join(tmp, "reducer.h5"), {})
        codebook.save(os.path.join(tmp, "codebook.h5"), {})
        other = os.path.join(tmp, "other")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", other, against], check=True)
        try:
            commit = subprocess.run(
                ["git", "-C", other, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            times = {"this": [], "other": []}
            for _ in range(rounds):
                times["this"].append(side(ROOT, tmp, "this", images, rank, assign))
                times["other"].append(side(other, tmp, "other", images, rank, assign))
            same = np.load(os.path.join(tmp, "words-this.npy")) == np.load(os.path.join(tmp, "words-other.npy"))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", other], check=False)
    descriptors = images * blocks.n_local()
    us = {name: [1e6 * s / descriptors for s in seconds] for name, seconds in times.items()}
    best = {name: min(values) for name, values in us.items()}
    rows = [
        (
            "images; descriptors; reducer components; words",
            f"{images:,}; {descriptors:,}; {reducer.n_components_}; {codebook.size}",
        ),
        *(
            (f"compute_histograms, {name}", f"{' / '.join(f'{v:.1f}' for v in values)} us per descriptor (rounds)")
            for name, values in (("this checkout", us["this"]), (f"{against} ({commit})", us["other"]))
        ),
        (f"{against} / this checkout, best rounds", f"{best['other'] / best['this']:.2f}"),
        ("words the same", f"{int(same.sum()):,} of {same.size:,}"),
    ]
    figures = {
        "bench": "against",
        "against": against,
        "against_commit": commit,
        "images": images,
        "us_per_descriptor": {"this": us["this"], "against": us["other"]},
        "ratio": round(best["other"] / best["this"], 3),
        "words_same": int(same.sum()),
        "words": int(same.size),
    }
    report(rows, figures)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images timed on each side")
    parser.add_argument("--rank", type=int, default=256, help="rank of the synthetic descriptors")
    parser.add_argument("--rounds", type=int, default=3, help="times each side runs, in turn")
    parser.add_argument("against", help="the commit to compare with (any git revision)")
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("against", args, argv):
        run(args.against, images=args.images, rounds=args.rounds, rank=args.rank)


if __name__ == "__main__":
    main()
