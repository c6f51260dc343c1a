"""Synthetic descriptors for the benchmarks that simulate a collection larger than can be extracted here."""

import numpy as np

from pipeline.blocks import Blocks


class SyntheticBlocks(Blocks):
    """Descriptors of ``n_images`` simulated images, made on demand (float16, to halve their memory)."""

    def __init__(self, n_images, n_local=49, channels=2048, rank=64, themes=512, seed=0):
        super().__init__(n_images)
        rng = np.random.default_rng(seed)
        self.basis = (rng.normal(size=(rank, channels)) / np.sqrt(rank)).astype(np.float32)
        self.themes = (3 * rng.normal(size=(themes, rank))).astype(np.float32)
        self.local, self.seed = n_local, seed

    def read(self, positions):
        z = np.empty((len(positions), self.local, len(self.themes[0])), dtype=np.float32)
        for i, p in enumerate(positions):
            rng = np.random.default_rng((self.seed, int(p)))
            z[i] = self.themes[rng.integers(len(self.themes), size=self.local)] + rng.normal(size=z.shape[1:])
        return (z @ self.basis).astype(np.float16)

    def n_local(self):
        return self.local
