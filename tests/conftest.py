import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib

import luigi
import pytest
import sqlalchemy as sa
from luigi.configuration import LuigiConfigParser

from pipeline import backends, cms
from pipeline.demo import make_collection

#: A small collection for the end-to-end tests: 6 groups of 3 near-duplicates.
SMALL_BASES = ("astronaut", "coffee", "chelsea", "page", "coins", "flower")


@contextlib.contextmanager
def luigi_config(monkeypatch, path=None):
    """Luigi reads only ``path`` (no luigi.cfg of the working tree), with fresh task and config instances."""
    monkeypatch.setattr(LuigiConfigParser, "_instance", None)
    monkeypatch.setattr(LuigiConfigParser, "_config_paths", [str(path)] if path else [])
    luigi.task_register.Register.clear_instance_cache()
    try:
        yield
    finally:
        luigi.task_register.Register.clear_instance_cache()


#: The thread pools of TensorFlow, OpenMP and BLAS: one thread each in a parallel worker.
THREADS = (
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def pytest_configure(config):
    """With parallel workers (make test: one per core), each computes on one thread: pools of a
    thread per core in every worker contend for the cores and made the tier a fifth slower. Set
    here, before the workers start, they inherit it; a variable set by the user is kept."""
    if getattr(config.option, "numprocesses", None):
        for name in THREADS:
            os.environ.setdefault(name, "1")


@pytest.fixture(autouse=True)
def isolated_luigi(monkeypatch):
    with luigi_config(monkeypatch):
        yield


@pytest.fixture(scope="session", autouse=True)
def stand_in_model():
    """The tiny stand-in for ResNet50 (``tests.faults.TinyBackend``) in this process, from before any
    other fixture: the tests marked ``resnet`` (the model's own, the demo's night) build ResNet50."""
    from .faults import TinyBackend

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setitem(backends.BACKENDS, "keras", TinyBackend)
        yield


@pytest.fixture(autouse=True)
def resnet_where_marked(request, monkeypatch):
    if request.node.get_closest_marker("resnet") is not None:
        monkeypatch.setitem(backends.BACKENDS, "keras", backends.KerasBackend)


def write_config(path, sections):
    """Write a luigi.cfg from {section: {key: value}}."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def pipeline_config(root, **overrides):
    """The settings of a test run under ``root``: random weights at float32, small batches."""
    sections = {
        "paths": {"content": root / "content", "artifacts": root / "artifacts"},
        "ids": {"csv": root / "content" / "image_ids.csv"},
        "resnet": {"weights": "random", "batch_size": 4, "precision": "float32"},  # the same on every CPU
        "images": {"decode_processes": 1},  # the tests run on every core already (make test)
        "progress": {"interval": 0},  # a progress line after every batch
        "selfcheck": {"sample": 0},  # model work: only where a test asks for it
        "neighbours": {"rerank": "off"},  # it needs the self-check
        "copies": {"threshold": "off"},  # the threshold comes from the self-check
        "retcode": {
            "already_running": 10,
            "missing_data": 20,
            "task_failed": 30,
            "scheduling_error": 35,
            "unhandled_exception": 40,
        },
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        sections.setdefault(section, {})[name] = value
    return write_config(root / "luigi.cfg", sections)


def made_once(tmp_path_factory, name, make):
    """The folder ``name`` made by ``make(folder)`` once per test session, whichever of the
    session's processes (pytest-xdist's workers) asks first; the others wait for it and share
    it. ``make``'s return value is kept beside it as JSON. Returns (folder, value)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has a folder of its own in the session's
        base = base.parent
    folder, made = base / name, base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process ends
        if not made.exists():
            if folder.exists():  # what a failed attempt left
                shutil.rmtree(folder)
            folder.mkdir()
            made.write_text(json.dumps(make(folder)))
        return folder, json.loads(made.read_text())


@pytest.fixture(scope="session")
def small_collection(tmp_path_factory):
    """A demo collection with 18 mapped images, one unmapped file and one row without a file."""
    return made_once(tmp_path_factory, "collection", lambda root: make_collection(root, bases=SMALL_BASES))


def png_declaring(path, width, height):
    """Write a small PNG file whose header declares width x height pixels (a decompression bomb)."""
    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = chunk[4:]
    data[29:33] = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def environment_lacks(reason):
    """Skip a test that needs what this machine lacks (a database server, the right to mount),
    unless REQUIRE_ALL_TESTS=1 (set by .ci/run), which makes it fail instead."""
    if os.environ.get("REQUIRE_ALL_TESTS") == "1":
        pytest.fail(f"{reason}, and REQUIRE_ALL_TESTS=1 requires it")
    pytest.skip(reason)


@contextlib.contextmanager
def small_disk(path, size="64m"):
    """A tmpfs of ``size`` mounted at ``path`` (a disk that can be filled or made read-only)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        environment_lacks(f"a tmpfs cannot be mounted here ({done.stderr.strip() or done.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def as_ordinary_user():
    """Run the block as the user nobody when the tests run as root (whom file permissions
    do not stop), so that a file without read permission is unreadable, as for a site's
    service account."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture()
def shared_dir():
    """A folder the user nobody may enter (pytest's own folders are private to root)."""
    path = tempfile.mkdtemp(prefix="similarity-test-")
    os.chmod(path, 0o755)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path)


#: The database servers the tests load into; this project's machines run both on 127.0.0.1.
SERVERS = {
    "postgresql": os.environ.get("CMS_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("CMS_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ["sqlite", *SERVERS]


class Database:
    """One test's database: an engine and table names of its own, dropped afterwards."""

    def __init__(self, url):
        self.url = url
        self.engine = cms.connect(cms.resolve_url(url))
        suffix = uuid.uuid4().hex[:8]
        self.table, self.marker = f"sim_{suffix}", f"load_{suffix}"
        self.images, self.verdicts = f"images_{suffix}", f"verdict_{suffix}"

    def rows(self):
        with self.engine.connect() as conn:
            table = sa.table(
                self.table,
                sa.column("image_id"),
                sa.column("rank"),
                sa.column("similar_image_id"),
                sa.column("distance"),
                sa.column("run_id"),
            )
            return sorted(tuple(r) for r in conn.execute(sa.select(table)))

    def load(self, result, run_id, **kwargs):
        ids, neighbours, distances = result
        return cms.load_similarities(
            self.engine, ids, neighbours, distances, run_id, "2026-11-23", self.table, self.marker, **kwargs
        )

    def loaded(self):
        return cms.loaded_run(self.engine, self.table, self.marker)

    def drop(self):
        with self.engine.begin() as conn:
            for name in (self.table, self.marker, self.images, self.verdicts):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.engine.dialect.identifier_preparer.quote(name)}"))
        self.engine.dispose()


@pytest.fixture(params=BACKENDS)
def database(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'cms.sqlite'}" if request.param == "sqlite" else SERVERS[request.param]
    db = Database(url)
    if request.param != "sqlite" and not cms.reachable(db.engine):
        environment_lacks(f"no {request.param} server answers at {url}")
    yield db
    db.drop()


#: The test modules whose tests run whole pipeline runs, started first and in this order (the
#: first two make the two shared runs, one each): the parallel workers (make test) then end on
#: the short tests, none left waiting for a long one.
LONG_FIRST = (
    "test_runs.py",
    "test_demo_run.py",
    "test_run_inputs.py",
    "test_nights.py",
    "test_verdict_nights.py",
    "test_nightly.py",
    "test_luigid.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: in order within each
