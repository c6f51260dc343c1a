import hashlib
import itertools
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pipeline.blocks import ArrayBlocks, DescriptorBlocks, sample_images
from pipeline.collection import ImageFile, Inventory
from pipeline.errors import ArtifactError
from pipeline.extraction import extract_to_store, shard_of
from pipeline.h5io import atomic_path, read_attrs
from pipeline.store import FeatureStore, dequantize, index_inventory, load_index, quantize, save_index

from .conftest import small_disk


class FakeExtractor:
    """Descriptors that encode the file name; files named bad* fail to decode."""

    batch_size = 2
    decoded_by = {}

    def __init__(self):
        self.seen = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, paths):
        for start in range(0, len(paths), self.batch_size):
            batch = paths[start : start + self.batch_size]
            self.seen.extend(os.path.basename(p) for p in batch)
            values = [float(os.path.basename(p).split(".")[0].strip("bad") or 0) for p in batch]
            descriptors = np.array(values, dtype=np.float16)[:, None, None] * np.ones((1, 3, 2), np.float16)
            errors = {i: "cannot identify image file" for i, p in enumerate(batch) if "bad" in p}
            yield start, descriptors, errors, {}


def inventory(names):
    files = [ImageFile("1", name, 10, 20) for name in names]
    return Inventory(ids=np.arange(100, 100 + len(names)), files=files, unmapped=[], missing=[])


def test_extraction_commits_batches_and_resumes_where_it_stopped(tmp_path):
    store = FeatureStore(tmp_path / "store")
    inv = inventory(["1.jpg", "2.jpg", "bad3.jpg", "4.jpg", "5.jpg"])
    first = FakeExtractor()
    run = first.run
    first.run = lambda paths: itertools.islice(run(paths), 2)  # killed after 2 batches
    extract_to_store(store, lambda: first, inv.files, "content")
    assert first.seen == ["1.jpg", "2.jpg", "bad3.jpg", "4.jpg"]

    second = FakeExtractor()
    assert extract_to_store(store, lambda: second, inv.files, "content")[:3] == (1, 4, {})
    assert second.seen == ["5.jpg"]  # the decode failure is remembered, not retried

    index = index_inventory(store, inv)
    assert index.ids.tolist() == [100, 101, 103, 104]
    assert index.rejected == [("PPN1/bad3.jpg", "cannot identify image file")]
    for block_size in (1, 3, 10):  # blocks cut across the chunks of the store
        blocks = DescriptorBlocks(store, index, block_size=block_size)
        values = [v for i in range(len(blocks)) for v in blocks[i][:, 0, 0].tolist()]
        assert values == [1.0, 2.0, 4.0, 5.0]
        assert blocks.n_local() == 3
    assert blocks.read([3, 0])[:, 0, 0].tolist() == [5.0, 1.0]

    save_index(tmp_path / "index.h5", index, {"digest": "d"})
    again = load_index(tmp_path / "index.h5")
    assert again.ids.tolist() == index.ids.tolist() and again.rejected == index.rejected
    assert list(again.chunk) == list(index.chunk) and again.row.tolist() == index.row.tolist()


def test_a_changed_file_is_extracted_again(tmp_path):
    store = FeatureStore(tmp_path / "store")
    extract_to_store(store, FakeExtractor, inventory(["1.jpg", "2.jpg"]).files, "content")
    changed = [ImageFile("1", "1.jpg", 11, 20), ImageFile("1", "2.jpg", 10, 20)]
    extractor = FakeExtractor()
    assert extract_to_store(store, lambda: extractor, changed, "content")[:3] == (1, 1, {})
    assert extractor.seen == ["1.jpg"]


def test_leftover_temporary_chunk_is_not_taken_as_done(tmp_path):
    store = FeatureStore(tmp_path / "store")
    os.makedirs(store.chunk_dir)
    (tmp_path / "store" / "chunks" / ".abc.h5.x.tmp").write_bytes(b"half written")
    assert store.scan() == ({}, {})
    with pytest.raises(ArtifactError, match="no descriptors in the feature store"):
        index_inventory(store, inventory(["1.jpg"]))


WRITE_ON_A_FULL_DISK = """
import os, sys
import numpy as np
from pipeline.codebook import Codebook
from pipeline.h5io import atomic_path
folder, rows = sys.argv[1], int(sys.argv[2])
codebook = Codebook(rows)
codebook.centers_ = np.zeros((rows, 256), dtype=np.float32)
codebook.inertia_, codebook.documents_ = 0.0, 1
codebook.document_frequency_ = np.zeros((1, rows), dtype=np.int64)
try:
    with atomic_path(os.path.join(folder, "codebook.h5")) as tmp:
        codebook.save(tmp, {"run_date": "2027-01-01"})
except OSError as exc:
    print("OSError", exc.errno)
    kept = exc  # as a task's runner keeps the failure (its traceback) until the process ends
print(sorted(os.listdir(folder)))
"""


@pytest.mark.parametrize("rows", [1000, 1010, 1016, 1020, 2000])
def test_an_artifact_written_on_a_full_disk_fails_with_an_oserror_not_a_crash(tmp_path, rows):
    # HDF5 crashes the process (SIGSEGV) as it closes a file one of whose writes met a full disk
    with small_disk(tmp_path / "disk", size="1m") as disk:
        done = subprocess.run(
            [sys.executable, "-c", WRITE_ON_A_FULL_DISK, str(disk), str(rows)], capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() in (["OSError 28", "[]"], ["['codebook.h5']"])


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "a.h5"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["a.h5"]


def test_image_sample_is_seeded_uniform_increasing_and_all_when_small():
    sample = sample_images(1000, 50, random_state=3)
    assert len(sample) == 50 and len(set(sample)) == 50 and (np.diff(sample) > 0).all()
    np.testing.assert_array_equal(sample, sample_images(1000, 50, random_state=3))
    assert not np.array_equal(sample, sample_images(1000, 50, random_state=4))
    np.testing.assert_array_equal(sample_images(10, 50, random_state=3), np.arange(10))
    np.testing.assert_array_equal(sample_images(10, 0, random_state=3), np.arange(10))


def test_subset_blocks_read_the_chosen_images():
    descriptors = np.arange(30 * 2 * 3).reshape(30, 2, 3)
    chosen = np.array([1, 4, 5, 17, 29])
    subset = ArrayBlocks(descriptors, block_size=4).subset(chosen)
    assert subset.n_images == 5 and subset.n_local() == 2
    np.testing.assert_array_equal(np.concatenate(list(subset)), descriptors[chosen])


def test_quantized_descriptors_come_back_within_half_a_step():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(4, 49, 256)), 0).astype(np.float16)  # ReLU-like, as the layer
    x[1, 3] = 2.5  # a constant descriptor
    x[2, :, 0] = -1.0  # and negative values, as other layers give
    codes, offset, scale = quantize(x)
    assert codes.dtype == np.uint8 and codes.shape == x.shape and offset.shape == scale.shape == (4, 49)
    back = dequantize(codes, offset, scale)
    assert (np.abs(back - x.astype(np.float32)) <= scale[..., None] / 2 + 1e-6).all()
    assert (back[1, 3] == 2.5).all() and (back[0][x[0] == 0] == 0).all()
    # the codes are those of the formula, computed in float32 (a brute force over the values)
    values = x.astype(np.float32)
    low, high = values.min(axis=-1), values.max(axis=-1)
    step = np.where(high > low, (high - low) / np.float32(255), np.float32(1)).astype(np.float32)
    np.testing.assert_array_equal(codes, np.rint((values - low[..., None]) / step[..., None]).astype(np.uint8))
    np.testing.assert_array_equal(offset, low)
    np.testing.assert_array_equal(scale, step)


def test_shards_depend_on_the_path_alone_and_split_evenly():
    paths = [f"PPN{i // 50}/{i:05d}.jpg" for i in range(4000)]
    shards = [shard_of(p, 8) for p in paths]
    assert shards == [shard_of(p, 8) for p in reversed(paths)][::-1]  # not on the order of a listing
    assert [shard_of(p, 8) for p in paths[:10]] == shards[:10]  # nor on which other images exist
    assert min(np.bincount(shards, minlength=8)) > 400  # 500 each on average
    # the same on any machine and Python version: SHA-1 of the UTF-8 path
    assert [shard_of(p, 1000) for p in ("PPN1/a.jpg", "PPN77 Ärchiv/ü.png")] == [
        int.from_bytes(hashlib.sha1(p.encode()).digest()[:8], "big") % 1000
        for p in ("PPN1/a.jpg", "PPN77 Ärchiv/ü.png")
    ]


def test_the_catalog_spares_reading_old_chunks_and_misses_no_new_one(tmp_path):
    store = FeatureStore(tmp_path / "store")
    extract_to_store(store, FakeExtractor, inventory(["1.jpg", "2.jpg", "bad3.jpg", "4.jpg"]).files, "content")
    full = store.scan()
    assert store.update_catalog() == full
    for name in os.listdir(store.chunk_dir):  # covered chunks are no longer opened by a scan
        (tmp_path / "store" / "chunks" / name).write_bytes(b"not read")
    assert store.scan() == full
    extract_to_store(store, FakeExtractor, inventory(["5.jpg"]).files, "content")  # written after the catalog
    done, rejected = store.scan()
    assert sorted(done) == sorted([*full[0], ImageFile("1", "5.jpg", 10, 20).key]) and rejected == full[1]


@pytest.mark.parametrize("catalogued", [False, True])
@pytest.mark.parametrize("damage", ["removed", "overwritten"])
def test_the_rejected_files_of_a_chunk_set_aside_are_tried_again(tmp_path, catalogued, damage):
    store = FeatureStore(tmp_path / "store")
    files = inventory(["1.jpg", "bad2.jpg", "3.jpg", "bad4.jpg"]).files  # batches of 2: each chunk one of each
    extract_to_store(store, FakeExtractor, files, "content")
    if catalogued:
        store.update_catalog()
    first_chunk = store.scan()[0][files[0].key][0]
    path = tmp_path / "store" / "chunks" / first_chunk
    if damage == "removed":
        path.unlink()
    else:
        path.write_bytes(b"\0" * path.stat().st_size)
    again = FakeExtractor()
    extracted = extract_to_store(store, lambda: again, files, "content")
    assert again.seen == ["1.jpg", "bad2.jpg"]  # the good file and the rejected one of that chunk
    # counted as repaired where the catalog had listed the chunk (else it is simply not in the store)
    assert (extracted.repaired_chunks, extracted.repaired_images) == ((1, 2) if catalogued else (0, 0))
    store.clear_set_aside()
    assert sorted(store.update_catalog()[1]) == sorted([files[1].key, files[3].key])
    assert index_inventory(store, inventory(["1.jpg", "bad2.jpg", "3.jpg", "bad4.jpg"])).ids.tolist() == [100, 102]


def test_a_catalog_of_an_earlier_version_is_read_past(tmp_path):
    store = FeatureStore(tmp_path / "store")
    files = inventory(["1.jpg", "bad2.jpg"]).files
    extract_to_store(store, FakeExtractor, files, "content")
    full = store.update_catalog()
    with h5py.File(store.catalog_path, "a") as f:  # as an earlier version wrote it
        del f["rejected_chunk"]
    assert store.scan() == full  # every chunk read again
    assert extract_to_store(store, FakeExtractor, files, "content")[:2] == (0, 2)


def test_attributes_are_read_again_whenever_the_file_changes(tmp_path):
    path = tmp_path / "artifact.h5"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["digest"] = "first"
    assert read_attrs(path)["digest"] == "first"
    read_attrs(path)["digest"] = "changed by a caller"  # a copy: the next reader is not misled
    assert read_attrs(path)["digest"] == "first"
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:  # replaced, as every artifact is
        f.attrs["digest"] = "second"
    assert read_attrs(path)["digest"] == "second"
    with h5py.File(path, "a") as f:  # written in place
        f.attrs["digest"] = "third"
    assert read_attrs(path)["digest"] == "third"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(OSError):
        read_attrs(path)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        read_attrs(path)


def test_chunks_are_checksummed_and_a_flipped_byte_is_found(tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    files = [ImageFile("1", name, 1, 1) for name in "abcdef"]
    descriptors = np.random.default_rng(0).random((3, 49, 8), dtype=np.float32)
    name = store.write_chunk([f.key for f in files[:3]], descriptors, {})
    path = os.path.join(store.chunk_dir, name)
    with h5py.File(path) as f:
        assert all(f[d].fletcher32 for d in ("codes", "offset", "scale"))
    store.update_catalog()
    assert store.damaged([name]) == {}
    index = index_inventory(store, Inventory(np.arange(3), files[:3], [], []))
    np.testing.assert_array_equal(DescriptorBlocks(store, index).read(np.arange(3)), dequantize(*quantize(descriptors)))

    # a flipped byte, the file's time kept: the stat agrees with the catalog, the read does not
    with h5py.File(path) as f:
        at = f["codes"].id.get_chunk_info(1).byte_offset
    times = os.stat(path)
    data = bytearray(open(path, "rb").read())
    data[at + 5] ^= 1
    open(path, "wb").write(bytes(data))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert store.damaged([name]) == {}  # one stat per chunk: found when read
    with pytest.raises(ArtifactError, match=f"feature chunk {name} .* is damaged .*set aside"):
        DescriptorBlocks(store, index).read(np.arange(3))
    assert store.set_aside_chunks() == [name] and not os.path.exists(path)
    assert "No such file" in store.damaged([name])[name]  # the next extraction makes its images again


def test_images_read_in_any_order_across_chunks_are_their_codes_times_scale_plus_offset(tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    files = [ImageFile("1", f"{name}.jpg", 1, 1) for name in "abcdefg"]
    rng = np.random.default_rng(1)
    descriptors = rng.normal(size=(7, 4, 16)).astype(np.float32) * rng.uniform(0.01, 100, size=(7, 4, 1))
    store.write_chunk([f.key for f in files[:4]], descriptors[:4], {})
    store.write_chunk([f.key for f in files[4:]], descriptors[4:], {})
    store.update_catalog()
    index = index_inventory(store, Inventory(np.arange(7), files, [], []))
    codes, offset, scale = quantize(descriptors)
    formula = codes * scale[..., None] + offset[..., None]  # numpy's float32 product, then sum
    positions = np.array([6, 1, 4, 0, 2])  # both chunks, out of order
    read = DescriptorBlocks(store, index).read(positions)
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read.view(np.uint32), formula[positions].view(np.uint32))
