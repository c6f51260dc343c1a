"""Extraction into the feature store: which files a shard extracts, and the loop that commits
each batch while the model runs on the next."""

import collections
import concurrent.futures
import hashlib
import json
import logging
import os
from typing import NamedTuple

import numpy as np

from . import backends
from .images import FALLBACK

logger = logging.getLogger(__name__)


class Extracted(NamedTuple):
    """What one extraction did: files extracted (or rejected), files already in the store, the
    files decoded by each decoder (:attr:`pipeline.images.Decoded.decoder`), and the damaged or
    missing chunks whose images it extracted again, and how many those were."""

    extracted: int
    reused: int
    decoded_by: dict
    repaired_chunks: int = 0
    repaired_images: int = 0


def done_whole(store, files):
    """The store's scan (:meth:`FeatureStore.scan`), less the images of ``files`` whose chunk is
    damaged or missing, extracted or rejected (those chunks set aside, so that their images are
    extracted again and their rejected files tried again).

    Returns
    -------
    done, rejected : as :meth:`FeatureStore.scan`
    repaired_chunks, repaired_images : int
    """
    done, rejected = store.scan()
    chunk_of = {f.key: found[f.key][0] for f in files for found in (done, rejected) if f.key in found}
    damaged = store.damaged(sorted(set(chunk_of.values())))
    for name, reason in damaged.items():
        store.set_aside(name, reason)
    if not damaged:
        return done, rejected, 0, 0
    lost = [key for key, name in chunk_of.items() if name in damaged]
    for key in lost:
        done.pop(key, None)
        rejected.pop(key, None)
    logger.warning("%d damaged or missing feature chunks: %d images to extract again", len(damaged), len(lost))
    return done, rejected, len(damaged), len(lost)


def shard_of(relpath, shards):
    """The shard (0 .. shards - 1) of an image: a stable hash of its path below content/, so
    that it never depends on the listing, the machine or the Python version, and adding
    images never moves the others."""
    return int.from_bytes(hashlib.sha1(relpath.encode("utf-8")).digest()[:8], "big") % shards


def in_shard(relpaths, shard, shards):
    """Positions of the images (paths below content/) of shard ``shard`` of ``shards``: int64 ndarray."""
    return np.array([i for i, p in enumerate(relpaths) if shard_of(p, shards) == shard], dtype=np.int64)


def extract_to_store(store, make_extractor, files, content_dir, progress=None, inbox=None):
    """Extract the descriptors of the files the store does not hold yet.

    Batches are formed over the files still to do in their given order, so a resumed run
    forms the same batches as the run it resumes. Several processes may extract disjoint
    files into one store at once (each chunk is its own file, renamed into place whole).

    Parameters
    ----------
    store : FeatureStore
    make_extractor : callable returning a DescriptorExtractor
        Called only when there is something to extract (building the model takes seconds).
    files : list of ImageFile
    content_dir : str
    progress : callable(done, total), optional
        Called after each committed batch.
    inbox : pipeline.thumbnails.Inbox, optional
        Where each batch's views go (the extractor then makes them), before its chunk is committed.

    Returns
    -------
    Extracted
    """
    done, rejected, repaired_chunks, repaired_images = done_whole(store, files)
    todo = [f for f in files if f.key not in done and f.key not in rejected]
    logger.info("extracting %d images, reusing %d already in the feature store", len(todo), len(files) - len(todo))
    if not todo:
        return Extracted(0, len(files), {})
    paths = [os.path.join(content_dir, f.relpath) for f in todo]
    # each batch is committed in a thread while the model runs on the next one (8-bit codes
    # and compression cost about a tenth of a CPU forward pass); one commit at a time is in
    # flight, and a failed commit stops the extraction
    committed, pending = 0, None

    def commit(keys, descriptors, rejected, views):
        if inbox is not None:
            inbox.put(list(views), list(views.values()))
        store.write_chunk(keys, descriptors, rejected)
        return len(keys) + len(rejected)

    def wait_for_commit():
        nonlocal committed
        committed += pending.result()
        if progress is not None:
            progress(committed, len(todo))

    with make_extractor() as extractor, concurrent.futures.ThreadPoolExecutor(1) as writer:
        for start, descriptors, errors, views in extractor.run(paths):
            batch = todo[start : start + len(descriptors)]
            good = [i for i in range(len(batch)) if i not in errors]
            rejected = {batch[i].key: reason for i, reason in errors.items()}
            views = {batch[i].key: pair for i, pair in views.items()}
            if pending is not None:
                wait_for_commit()
            pending = writer.submit(commit, [batch[i].key for i in good], descriptors[good], rejected, views)
        if pending is not None:
            wait_for_commit()
        decoded_by = extractor.decoded_by
    logger.info("decoded by: %s", ", ".join(f"{name} {n}" for name, n in sorted(decoded_by.items())) or "none")
    if decoded_by.get(FALLBACK):
        logger.warning(
            "%d files libvips could not read (or whose pixels are not 8- or 16-bit) were decoded whole by Pillow",
            decoded_by[FALLBACK],
        )
    return Extracted(len(todo), len(files) - len(todo), decoded_by, repaired_chunks, repaired_images)


def extract_features(store, files, content_dir, spec, batch_size=16, progress=None, inbox=None, **decoding):
    """Bring the store up to date with ``files`` (all of an inventory's, or one shard's), their
    descriptors made as the :class:`~pipeline.backends.ModelSpec` ``spec`` says, by the model of
    its backend for this store (at int8, the store's calibrated trunk: :func:`pipeline.backends.calibrate_store`),
    and their views into ``inbox`` when given (:func:`extract_to_store`).

    ``decoding`` holds the DescriptorExtractor's decoding settings (``decode_processes``,
    ``decode_timeout``, ``max_pixels``).

    Returns
    -------
    Extracted
    """
    views = inbox is not None
    return extract_to_store(
        store,
        lambda: backends.extractor(spec, store.root, batch_size, views=views, **decoding),
        files,
        content_dir,
        progress,
        inbox,
    )


def shards_done(ran):
    """What the extraction's shards that ran did, summed from their records ``ran`` (dicts): the
    images extracted, the shards' seconds, the decoders used (JSON), the feature chunks repaired
    and their images; and a line saying what was repaired, or None."""
    decoded_by = collections.Counter()
    for record in ran:
        decoded_by.update(json.loads(record.get("decoded_by", "{}")))
    done = {
        "extracted": sum(r["extracted"] for r in ran),
        "shard_seconds": round(sum(r["seconds"] for r in ran), 3),
        "decoded_by": json.dumps(decoded_by),
        **{key: sum(r.get(key, 0) for r in ran) for key in ("repaired_chunks", "repaired_images")},
    }
    chunks = done["repaired_chunks"] and (
        f"{done['repaired_chunks']} damaged or missing feature chunks: their "
        f"{done['repaired_images']} images extracted again"
    )
    return done, chunks or None
