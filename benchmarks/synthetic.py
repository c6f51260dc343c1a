"""Synthetic descriptors for the benchmarks that simulate a collection larger than can be extracted here."""

import numpy as np

from pipeline.blocks import Blocks
from pipeline.threads import one_blas_thread


class SyntheticBlocks(Blocks):
    """Descriptors of ``n_images`` simulated images, made on demand (float16 by default, to halve
    their memory; float32 as the feature store gives them costs less to make)."""

    def __init__(self, n_images, n_local=49, channels=2048, rank=64, themes=512, seed=0, dtype=np.float16):
        super().__init__(n_images)
        rng = np.random.default_rng(seed)
        self.basis = (rng.normal(size=(rank, channels)) / np.sqrt(rank)).astype(np.float32)
        self.themes = (3 * rng.normal(size=(themes, rank))).astype(np.float32)
        self.local, self.seed, self.dtype = n_local, seed, dtype

    def read(self, positions):
        z = np.empty((len(positions), self.local, len(self.themes[0])), dtype=np.float32)
        for i, p in enumerate(positions):
            rng = np.random.default_rng((self.seed, int(p)))
            z[i] = self.themes[rng.integers(len(self.themes), size=self.local)] + rng.normal(size=z.shape[1:])
        # on one BLAS thread: the threads of a product over both cores go on spinning after it and
        # slowed the stage reading these descriptors by about 1.45 times (benchmarks.firstnight)
        with one_blas_thread():
            return (z @ self.basis).astype(self.dtype, copy=False)

    def n_local(self):
        return self.local


def served_run(folder, n_images, k=5, per_record=20, group_share=0.02, seed=0, date="2026-12-01"):
    """The artifacts a finished night leaves for the web app, made up for ``n_images`` images:
    similarities.hdf5 (random lists, nearest first, each image's record of ``per_record`` images),
    copies.h5 (a ``group_share`` of the images in groups of two), map.h5 and run_report.json.

    Returns
    -------
    ids : ndarray of int64
        The images' database IDs (1,000,001 onwards).
    """
    import os

    import pandas as pd

    from pipeline.atlas import save_map
    from pipeline.copies import Numbered, save_copies
    from pipeline.output import write_similarities
    from pipeline.report import write_json

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    ids = np.arange(1_000_001, 1_000_001 + n_images, dtype=np.int64)
    rows = np.arange(n_images)
    ppn = np.char.add("6", np.char.zfill((rows // per_record).astype(str), 8))
    filename = np.char.add(np.char.zfill((rows % per_record + 1).astype(str), 8), ".jpg")
    neighbours = (rows[:, None] + rng.integers(1, n_images, size=(n_images, k))) % n_images
    distances = np.sort(rng.uniform(0.05, 0.9, size=(n_images, k)), axis=1)
    attrs = {
        "digest": f"synthetic{seed:04d}{n_images}",
        "run_date": date,
        "metric": "cosine",
        "weighting": "tfidf",
        "power": 0.5,
    }
    write_similarities(os.path.join(folder, "similarities.hdf5"), ids, ppn, filename, neighbours, distances, attrs)
    grouped = rng.choice(n_images, size=2 * (int(group_share * n_images) // 2), replace=False)
    group = np.repeat(np.arange(1, len(grouped) // 2 + 1), 2)
    frame = pd.DataFrame(
        {
            "group": group,
            "image_id": ids[grouped],
            "ppn": ppn[grouped],
            "filename": filename[grouped],
            "first_seen": date,
            "set": "",
        }
    )
    numbered = Numbered(frame, int(group.max(initial=0)) + 1, [])
    save_copies(
        os.path.join(folder, "copies.h5"), numbered, {"threshold": 0.1, "digest": attrs["digest"], "run_date": date}
    )
    save_map(os.path.join(folder, "map.h5"), ids, rng.uniform(0.05, 0.95, size=(n_images, 2)), {"run_date": date})
    write_json(
        os.path.join(folder, "run_report.json"),
        {"date": date, "status": "ok", "images_total": n_images, "rejected": []},
    )
    return ids
