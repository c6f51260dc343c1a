"""Descriptors streamed in fixed blocks of images: from the feature store, a subset, or memory."""

import os

import h5py
import numpy as np

from .errors import ArtifactError
from .store import read_block

#: Images per block when later stages stream descriptors. Fixed, so that sums over blocks are
#: the same float for float whatever chunks the store holds (an interrupted or incremental
#: extraction commits other chunks than a single run).
BLOCK_SIZE = 128


def fixed_blocks(n, block_size=BLOCK_SIZE):
    """Consecutive ranges of positions: [0, b), [b, 2b), ..."""
    return [np.arange(s, min(s + block_size, n)) for s in range(0, n, block_size)]


class Blocks:
    """Descriptors of n images as a sequence of fixed blocks of images, read on demand.

    ``blocks[i]`` is an ndarray of shape (n_i, n_local, c) for the images at
    ``blocks.positions(i)``; a stage that resumes at block i reads nothing before it.
    Subclasses say how to ``read(positions)`` and ``n_local()``.
    """

    def __init__(self, n_images, block_size=BLOCK_SIZE):
        self.n_images = n_images
        self._blocks = fixed_blocks(n_images, block_size)

    def __len__(self):
        return len(self._blocks)

    def positions(self, i):
        return self._blocks[i]

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.read(self._blocks[i])

    def subset(self, positions):
        """The images at ``positions`` (increasing), as blocks of their own."""
        return SubsetBlocks(self, positions)


class SubsetBlocks(Blocks):
    """Some images of other blocks, read from them on demand."""

    def __init__(self, parent, positions, block_size=BLOCK_SIZE):
        super().__init__(len(positions), block_size)
        self.parent = parent
        self.chosen = np.asarray(positions, dtype=np.int64)

    def read(self, positions):
        return self.parent.read(self.chosen[positions])

    def n_local(self):
        return self.parent.n_local()


def sample_images(n_images, n_wanted, random_state):
    """A seeded uniform sample of image positions, increasing.

    Returns
    -------
    positions : ndarray of shape (min(n_images, n_wanted),), int64
        Every position when ``n_wanted`` is 0 or at least ``n_images``.
    """
    if n_wanted <= 0 or n_wanted >= n_images:
        return np.arange(n_images, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_images, size=n_wanted, replace=False)).astype(np.int64)


class DescriptorBlocks(Blocks):
    """The descriptors of a FeatureIndex, read from the feature store."""

    def __init__(self, store, index, block_size=BLOCK_SIZE):
        super().__init__(len(index), block_size)
        self.store = store
        self.index = index

    def read(self, positions):
        """Descriptors of any images, by position."""
        return read_block(self.store, self.index, np.asarray(positions))

    def n_local(self):
        """Number of local descriptors per image (h * w of the layer)."""
        if not len(self.index):
            raise ArtifactError("the feature index holds no images")
        with h5py.File(os.path.join(self.store.chunk_dir, self.index.chunk[0]), "r") as f:
            return int(f["codes"].shape[1])


class ArrayBlocks(Blocks):
    """Descriptors held in memory: synthetic collections and tests.

    Parameters
    ----------
    descriptors : ndarray of shape (n_images, n_local, c)
    """

    def __init__(self, descriptors, block_size=BLOCK_SIZE):
        super().__init__(len(descriptors), block_size)
        self.descriptors = descriptors

    def read(self, positions):
        return self.descriptors[positions]

    def n_local(self):
        return self.descriptors.shape[1]
