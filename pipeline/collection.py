"""Discovery of the image files under content/ and their join with the CMS's ID mapping."""

import concurrent.futures
import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd

from .errors import CollectionError, ConfigError, MappingError, named
from .h5io import create, read_ids, read_strings, write_ids, write_strings

logger = logging.getLogger(__name__)

#: File name extensions of the image files worth listing as ``unmapped`` when the ID mapping has
#: no row for them; other unmapped files in a record folder (``Thumbs.db``, sidecar XML) are
#: skipped quietly. A file named by the mapping is an image whatever its extension.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".tif",
        ".tiff",
        ".gif",
        ".bmp",
        ".dib",
        ".webp",
        ".tga",
        ".jp2",
        ".j2k",
        ".j2c",
        ".jpc",
        ".jpf",
        ".jpx",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
MAPPING_COLUMNS = ("id", "ppn", "filename")
_INTEGER = re.compile(r"^-?[0-9]+$")
_INT64_MIN, _INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


FINGERPRINTS = ("stat", "sha256")
#: Threads that list the record folders and read their files' times (or hashes) at once.
SCAN_THREADS = 8


@dataclass(frozen=True)
class ImageFile:
    """One image on disk, identified by its path below content/ and a fingerprint of its content."""

    ppn: str
    filename: str
    size: int
    mtime_ns: int
    sha256: str = ""
    """Hex digest of the content, when the fingerprint is ``sha256``."""

    @property
    def relpath(self):
        return f"PPN{self.ppn}/{self.filename}"

    @property
    def key(self):
        """Identity of this version of the file: a changed file gets a new key."""
        if self.sha256:
            return f"{self.relpath}|sha256:{self.sha256}"
        return f"{self.relpath}|{self.size}|{self.mtime_ns}"


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def strip_ppn(value):
    """Return a PPN without its "PPN" prefix: ``"PPN123"`` and ``"123"`` both give ``"123"``."""
    value = str(value).strip()
    return value[3:] if value.upper().startswith("PPN") else value


def scan_content(content_dir, fingerprint="stat", mapped=()):
    """List the image files of a collection.

    Images live one level down, in one folder per catalogue record: ``content/PPN<id>/<file>``.
    A file named by the ID mapping (``mapped``) is listed whatever its extension, so that it
    is decoded (or rejected with the decoder's reason); of the other files, those with an
    image extension (:data:`IMAGE_EXTENSIONS`, any case) are listed, to be reported as
    unmapped, and hidden files and the rest (``Thumbs.db``, sidecar XML) are skipped. Files
    directly in ``content/`` (such as the ID mapping) and folders not named ``PPN...`` are not
    images. Entries that cannot be read (dangling links, link loops, no permission) are
    listed, so that their decoding rejects them.

    Parameters
    ----------
    content_dir : str
        The collection's root folder.
    fingerprint : {"stat", "sha256"}
        How a changed file is recognised: by size and modification time (cheap), or by a hash
        of its content (reads every file; for storage whose times can't be trusted).
    mapped : iterable of (ppn, filename)
        The files the ID mapping names, ``ppn`` without its "PPN" prefix.

    Returns
    -------
    files : list of ImageFile, sorted by relative path
    """
    if fingerprint not in FINGERPRINTS:
        raise ConfigError(f"{named('fingerprint')}={fingerprint!r} must be one of {', '.join(FINGERPRINTS)}")
    if not os.path.isdir(content_dir):
        raise CollectionError(
            f"{named('content_dir')}={content_dir!r} is not a folder; set it to the folder that holds the PPN<id>/ folders"
        )
    mapped_names = {}
    for ppn, name in mapped:
        mapped_names.setdefault(ppn, set()).add(name)
    with os.scandir(content_dir) as entries:
        records = [
            (strip_ppn(r.name), r.name, r.path)
            for r in entries
            if _is_dir(r) and r.name.upper().startswith("PPN") and not r.name.startswith(".")
        ]

    def scan_record(record):
        ppn, folder, path = record
        return _scan_record(ppn, folder, path, mapped_names.get(ppn, set()), fingerprint)

    # the folders listed and their files' times read by several threads at once: on a network
    # file system each is a round trip to the server, which threads overlap
    with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
        files = [f for listed in pool.map(scan_record, records, chunksize=64) for f in listed]
    files.sort(key=lambda f: f.relpath)
    return files


def _scan_record(ppn, folder, path, wanted, fingerprint):
    """The ImageFiles of one record folder: the files ``wanted`` (by the mapping), and unmapped images."""
    try:
        with os.scandir(path) as listing:
            entries = [(entry.name, entry.path, _is_dir(entry)) for entry in listing]
    except OSError as exc:  # the mapped files that exist are listed (and rejected when unreadable)
        logger.warning("cannot list %s (%s): only its mapped files are looked for", folder, exc.strerror)
        paths = [(name, os.path.join(path, name)) for name in sorted(wanted)]
        entries = [(name, path, False) for name, path in paths if _exists(path)]
    return [
        _image_file(ppn, name, file_path, fingerprint)
        for name, file_path, is_dir in entries
        if name in wanted or _unmapped_image(name, is_dir)
    ]


def _image_file(ppn, name, path, fingerprint):
    """The ImageFile of an entry; a dangling link, a link loop or an unreadable file is listed
    too: its decoding fails and it is rejected with the reason, until it changes."""
    try:
        stat = os.stat(path)
    except OSError:
        try:
            stat = os.lstat(path)
        except OSError:
            stat = None
    sha = ""
    if fingerprint == "sha256":
        try:
            sha = file_sha256(path)
        except OSError as exc:
            sha = f"unreadable-{exc.errno}"
    return ImageFile(ppn, name, stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0, sha)


def _exists(path):
    """Whether an entry of that name exists (False only for "no such file")."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:  # no permission to look: it may exist; decoding tells
        return True
    return True


def _unmapped_image(name, is_dir):
    """Whether a file the mapping does not name is worth listing as ``unmapped``."""
    return not is_dir and not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_dir(entry):
    try:
        return entry.is_dir()
    except OSError:  # a link loop
        return False


def read_mapping(csv_path):
    """Read the CMS's ID mapping from a CSV file with the header ``id,ppn,filename``.

    Returns
    -------
    mapping : DataFrame from :func:`check_mapping`

    Raises
    ------
    MappingError
        When the file is unreadable, a column is missing, a value is empty, or an ID or a
        (ppn, filename) pair repeats.
    """
    source = f"{named('ids_csv')}={csv_path!r}"
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise MappingError(f"{source} does not exist; point it to the CSV file id,ppn,filename") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MappingError(f"{source} is not a readable CSV file: {exc}".replace("\n", " ")) from None
    return check_mapping(frame, source, "its header must be id,ppn,filename", "line", first_line=2)


def check_mapping(frame, source, header_fix, row_name, first_line=1):
    """Check an ID mapping and put it in the form the pipeline uses.

    Parameters
    ----------
    frame : DataFrame
        Columns id, ppn and filename, optionally record (any case, others ignored); values str or None.
    source : str
        Where the mapping comes from, for the messages (``[ids] csv='...'``).
    header_fix : str
        What the message about a missing column tells the user to do.
    row_name : str
        What a row is called in the messages ("line", "row"), numbered from ``first_line``.

    Returns
    -------
    mapping : DataFrame with string columns id, ppn (without the "PPN" prefix), filename and
        record (the column record where the frame has it and the value is not empty, else
        ``PPN<ppn>``), in the frame's order.

    Raises
    ------
    MappingError
        When a column is missing, a value is empty or NULL, or an ID or a (ppn, filename)
        pair repeats.
    """
    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    missing = [c for c in MAPPING_COLUMNS if c not in frame.columns]
    if missing:
        raise MappingError(f"{source} lacks the column(s) {', '.join(missing)}; {header_fix}")

    def clean(column):
        return column.map(lambda v: "" if v is None or v != v else str(v).strip())  # v != v: NaN

    given = clean(frame["record"]).to_numpy(dtype=str) if "record" in frame.columns else np.full(len(frame), "")
    frame = frame[list(MAPPING_COLUMNS)].apply(clean)
    frame["ppn"] = frame["ppn"].map(strip_ppn)
    line = np.arange(len(frame)) + first_line
    empty = (frame == "").any(axis=1).to_numpy()
    if empty.any():
        raise MappingError(f"{source} has empty or NULL values on {row_name}(s) {first(line[empty])}")
    for columns, what in ((["id"], "ID"), (["ppn", "filename"], "(ppn, filename) pair")):
        repeated = frame.duplicated(columns, keep=False).to_numpy()
        if repeated.any():
            raise MappingError(f"{source} repeats the same {what} on {row_name}s {first(line[repeated])}")
    # each image's catalogue record: the optional column record, else (or where empty) its PPN folder
    frame["record"] = np.where(given == "", "PPN" + frame["ppn"].to_numpy(dtype=str), given)
    return frame.reset_index(drop=True)


def first(values, n=10):
    """The first ``n`` of ``values``, joined, and how many more there are."""
    values = [str(v) for v in values]
    return ", ".join(values[:n]) + (f" and {len(values) - n} more" if len(values) > n else "")


@dataclass
class Inventory:
    """The images to process: those both on disk and in the mapping, plus what did not match."""

    ids: np.ndarray
    """Database IDs, int64 when every ID is an integer, else str; one per image."""
    files: list
    """ImageFile of each image, sorted by relative path; parallel to ``ids``."""
    unmapped: list
    """Relative paths of image files on disk that have no row in the mapping."""
    missing: list
    """``"id ppn/filename"`` of mapping rows whose file is not on disk."""
    records: list = None
    """Each image's catalogue record (see :func:`check_mapping`); by default ``PPN<ppn>``."""

    def __post_init__(self):
        if self.records is None:
            self.records = [f"PPN{f.ppn}" for f in self.files]

    def __len__(self):
        return len(self.files)

    def paths(self, ids, content_dir):
        """The files, under ``content_dir``, of the images with database IDs ``ids`` (in that order)."""
        relpath = {str(i): f.relpath for i, f in zip(self.ids, self.files)}
        return [os.path.join(content_dir, relpath[str(i)]) for i in ids]

    def records_of(self, relpaths):
        """The records of the images at ``relpaths`` (``PPN<ppn>/<file>``): ndarray of str."""
        record = dict(zip((f.relpath for f in self.files), self.records))
        return np.array([record[p] for p in relpaths], dtype=str)

    def fingerprint(self):
        """A digest of the images and their IDs: equal for equal collections."""
        digest = hashlib.sha256()
        for image_id, f, record in zip(self.ids, self.files, self.records):
            digest.update(f"{image_id}\t{f.key}\t{record}\n".encode())
        return digest.hexdigest()[:16]


def removed_images(previous, current):
    """Relative paths of the images ``previous`` (their relative paths) that the inventory
    ``current`` no longer has."""
    now = {f.relpath for f in current.files}
    return [relpath for relpath in previous if relpath not in now]


def too_many_removed(removed, previous, max_removed):
    """Whether ``removed`` of ``previous`` images is more than the share ``max_removed`` allows
    (rounded up to whole images: a small collection may lose one)."""
    return removed > math.ceil(max_removed * previous)


def relpath_of(key):
    """The relative path of the file of an :attr:`ImageFile.key`."""
    return key.rsplit("|", 1 if "|sha256:" in key else 2)[0]


def gone_from_disk(previous, content_dir):
    """The images of ``previous`` (their relative paths) whose files are no longer listed under
    ``content_dir``, by record folder (names only: one listing per folder, no file is opened).

    A folder that cannot be listed for another reason than its absence (no permission, a
    network error) has nothing gone: its files may be there, and the inventory says why it could not list them.

    Returns
    -------
    gone : dict of str to int
        Record folder (as the previous run named it) -> number of its images gone, for the folders with any.
    emptied : list of str
        The folders of ``gone`` that are missing or hold none of their images any more.
    """
    wanted = {}
    for relpath in previous:
        folder, name = os.path.split(relpath)
        wanted.setdefault(folder, set()).add(name)

    def count(item):
        folder, names = item
        try:
            with os.scandir(os.path.join(content_dir, folder)) as listing:
                listed = {entry.name for entry in listing}
        except (FileNotFoundError, NotADirectoryError):
            listed = set()
        except OSError:
            return folder, 0, False
        missing = len(names - listed)
        return folder, missing, missing == len(names)

    with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
        counted = list(pool.map(count, sorted(wanted.items()), chunksize=64))
    return {folder: n for folder, n, _ in counted if n}, [folder for folder, n, whole in counted if n and whole]


def build_inventory(files, mapping):
    """Join the files on disk with the mapping rows.

    Parameters
    ----------
    files : list of ImageFile
    mapping : DataFrame from :func:`read_mapping`

    Returns
    -------
    Inventory
    """
    by_name = {(f.ppn, f.filename): f for f in files}
    if "record" not in mapping.columns:
        mapping = mapping.assign(record="PPN" + mapping["ppn"])
    rows = {
        (ppn, name): (image_id, record)
        for image_id, ppn, name, record in mapping[[*MAPPING_COLUMNS, "record"]].itertuples(index=False)
    }
    matched = sorted((by_name[key].relpath, *row, by_name[key]) for key, row in rows.items() if key in by_name)
    missing = [f"{row[0]} PPN{ppn}/{name}" for (ppn, name), row in rows.items() if (ppn, name) not in by_name]
    unmapped = [f.relpath for f in files if (f.ppn, f.filename) not in rows]
    return Inventory(
        ids=parse_ids([image_id for _, image_id, _, _ in matched]),
        files=[f for _, _, _, f in matched],
        unmapped=unmapped,
        missing=missing,
        records=[record for _, _, record, _ in matched],
    )


def parse_ids(values):
    """Return database IDs as int64 when all are integers, else as str."""
    values = [str(v) for v in values]
    if values and all(_INTEGER.match(v) for v in values):
        numbers = [int(v) for v in values]
        if all(_INT64_MIN <= n <= _INT64_MAX for n in numbers):
            return np.array(numbers, dtype=np.int64)
    return np.array(values, dtype=str)


def save_inventory(path, inventory, attrs):
    """Write an Inventory to an HDF5 file with the given file attributes."""
    with create(path) as f:
        f.attrs.update(attrs)
        write_ids(f, "ids", inventory.ids)
        write_strings(f, "ppn", [x.ppn for x in inventory.files])
        write_strings(f, "filename", [x.filename for x in inventory.files])
        f.create_dataset("size", data=np.array([x.size for x in inventory.files], dtype=np.int64))
        f.create_dataset("mtime_ns", data=np.array([x.mtime_ns for x in inventory.files], dtype=np.int64))
        write_strings(f, "sha256", [x.sha256 for x in inventory.files])
        write_strings(f, "unmapped", inventory.unmapped)
        write_strings(f, "missing", inventory.missing)
        write_strings(f, "record", inventory.records)


def load_inventory(path):
    """Read an Inventory written by :func:`save_inventory`."""
    with h5py.File(path, "r") as f:
        files = [
            ImageFile(ppn, name, int(size), int(mtime), sha)
            for ppn, name, size, mtime, sha in zip(
                read_strings(f["ppn"]),
                read_strings(f["filename"]),
                f["size"][:],
                f["mtime_ns"][:],
                read_strings(f["sha256"]),
            )
        ]
        return Inventory(
            ids=read_ids(f["ids"]),
            files=files,
            unmapped=list(read_strings(f["unmapped"])),
            missing=list(read_strings(f["missing"])),
            records=list(read_strings(f["record"])) if "record" in f else None,
        )


def log_inventory(inventory, content_dir, shown=20):
    """Log how many images will be processed, and count and list those that will not."""
    logger.info("%d mapped images found under %s", len(inventory), content_dir)
    for items, what in (
        (inventory.unmapped, "image files have no row in the ID mapping and are left out"),
        (inventory.missing, "ID mapping rows have no file under the content folder and are left out"),
    ):
        if items:
            logger.warning("%d %s: %s", len(items), what, first(items, shown))


def log_rejected(rejected, shown=20):
    """Count and list the images that could not be decoded, as (relative path, reason) pairs."""
    if rejected:
        listed = "; ".join(f"{path}: {reason}" for path, reason in rejected[:shown])
        more = f" and {len(rejected) - shown} more" if len(rejected) > shown else ""
        logger.warning("%d images could not be decoded and are left out: %s%s", len(rejected), listed, more)


def take_inventory(content_dir, mapping, source, fingerprint="stat"):
    """Scan the collection, join it with the ID mapping and log what does not match.

    Parameters
    ----------
    content_dir : str
    mapping : DataFrame from :func:`check_mapping`
    source : str
        Where the mapping came from, for the messages.
    fingerprint : {"stat", "sha256"}

    Raises
    ------
    CollectionError
        When no image is both on disk and in the mapping.
    """
    files = scan_content(content_dir, fingerprint, mapped=mapping[["ppn", "filename"]].itertuples(index=False))
    inventory = build_inventory(files, mapping)
    log_inventory(inventory, content_dir)
    if not len(inventory):
        raise CollectionError(
            f"no image under {named('content_dir')}={content_dir!r} ({len(files)} image files) has a row in "
            f"{source}; check that the mapping's ppn and filename match the PPN<id>/<file> paths"
        )
    return inventory


def removal_from_disk(previous, content_dir, max_removed):
    """The removal guard before a night: one line naming how many of the previous run's images
    (their relative paths ``previous``) are gone from ``content_dir`` and the folders they were
    in, when more than the share ``max_removed``; else None."""
    gone, emptied = gone_from_disk(previous, content_dir)
    n = sum(gone.values())
    if not too_many_removed(n, len(previous), max_removed):
        return None
    where = []
    if emptied:
        folders = "record folder is" if len(emptied) == 1 else "record folders are"
        where.append(f"{len(emptied):,} {folders} gone or empty ({first(emptied)})")
    elsewhere = n - sum(gone[f] for f in emptied)
    if elsewhere:
        others = [f for f in gone if f not in set(emptied)]
        where.append(f"{elsewhere:,} images are gone from {len(others):,} other folders ({first(others)})")
    return (
        f"{n:,} of the previous run's {len(previous):,} images ({n / len(previous):.1%}) are gone from "
        f"{named('content_dir')}={content_dir!r}, more than {named('max_removed')}={max_removed:g}: "
        f"{'; '.join(where)}. Nothing was written: mount or restore the missing storage and run again, or, if "
        f"the images were removed on purpose, run once with {named('allow_removals')}"
    )


def check_removal_from_mapping(previous, inventory, source, max_removed):
    """The removal guard once the inventory is taken: raise CollectionError when more than the
    share ``max_removed`` of the previous run's images (their relative paths ``previous``) are gone from ``inventory``,
    naming those still on disk but no longer in the ID mapping (``source``: where it came from).

    Returns
    -------
    removed : list of str
        The relative paths of the previous run's images gone.
    """
    removed = removed_images(previous, inventory)
    if removed:
        logger.info("%d images of the previous run are gone: %s", len(removed), ", ".join(removed[:20]))
    if not too_many_removed(len(removed), len(previous), max_removed):
        return removed
    unmapped = set(inventory.unmapped)
    still = [relpath for relpath in removed if relpath in unmapped]
    n, total = len(removed), len(previous)
    raise CollectionError(
        f"{n:,} of the previous run's {total:,} images ({n / total:.1%}) are gone tonight, more than "
        f"{named('max_removed')}={max_removed:g}; {len(still):,} of them are on disk but no longer in the ID "
        f"mapping, {source} ({first(still or removed)}). Nothing was written: mend the mapping and run again, or, "
        f"if the images were removed on purpose, run once with {named('allow_removals')}"
    )
