"""Reducer fit: the streamed exact StandardScaler + PCA against scikit-learn's in-memory fit and
IncrementalPCA, on the same synthetic descriptors in one run.

    python -m benchmarks.reduce [--images 300] [--channels 2048]
"""

import argparse

import numpy as np
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.preprocessing import StandardScaler

from pipeline.blocks import ArrayBlocks
from pipeline.reduction import Reducer

from .common import Timer, add_record_option, recording, report


def synthetic_descriptors(images, channels, n_local=49, rank=64, seed=0):
    """ReLU-like descriptors with a low-rank structure, in float16 (half the memory of float32)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(images * n_local, rank)) @ rng.normal(size=(rank, channels)) / np.sqrt(rank)
    x += 0.3 * rng.normal(size=x.shape)
    return np.maximum(x, 0).astype(np.float16).reshape(images, n_local, channels)


def run(images=300, channels=2048, variance=0.97):
    descriptors = synthetic_descriptors(images, channels)
    flat = descriptors.reshape(-1, channels).astype(np.float32)
    with Timer() as streamed_t:
        streamed = Reducer(variance, "raw", "raw").fit(ArrayBlocks(descriptors))  # the method, as scikit-learn fits it
    with Timer() as full_t:
        scaled = StandardScaler().fit_transform(flat)
        full = PCA(n_components=variance, svd_solver="full").fit(scaled)
    with Timer() as incremental_t:
        IncrementalPCA(n_components=streamed.n_components_, batch_size=max(4096, streamed.n_components_)).fit(scaled)
    agree = np.abs(np.abs(streamed.components_[:10] @ full.components_[:10].T).diagonal() - 1).max()
    figures = {
        "bench": "reduce",
        "descriptors": len(flat),
        "channels": channels,
        "components": int(streamed.n_components_),
        "streamed_seconds": round(streamed_t.seconds, 2),
        "sklearn_full_seconds": round(full_t.seconds, 2),
        "incremental_pca_seconds": round(incremental_t.seconds, 2),
        "speedup_vs_incremental": round(incremental_t.seconds / streamed_t.seconds, 1),
        "max_component_mismatch": float(agree),
    }
    report(
        [
            ("descriptors x channels -> components", f"{len(flat)} x {channels} -> {streamed.n_components_}"),
            ("streamed exact fit (X^T X + eigh), s", figures["streamed_seconds"]),
            ("StandardScaler + PCA(full) in memory, s", figures["sklearn_full_seconds"]),
            ("IncrementalPCA, s", figures["incremental_pca_seconds"]),
            ("IncrementalPCA / streamed", figures["speedup_vs_incremental"]),
            ("first 10 components: max |1 - |cos||", f"{agree:.1e}"),
        ],
        figures,
    )
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--channels", type=int, default=2048)
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("reduce", args, argv):
        run(args.images, args.channels)


if __name__ == "__main__":
    main()
