import contextlib
import struct
import zlib

import luigi
import pytest
from luigi.configuration import LuigiConfigParser

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


@pytest.fixture(autouse=True)
def isolated_luigi(monkeypatch):
    with luigi_config(monkeypatch):
        yield


def write_config(path, sections):
    """Write a luigi.cfg from {section: {key: value}}."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def pipeline_config(root, **overrides):
    """The settings of a test run under ``root``: random weights, small batches."""
    sections = {
        "paths": {"content": root / "content", "artifacts": root / "artifacts"},
        "ids": {"csv": root / "content" / "image_ids.csv"},
        "resnet": {"weights": "random", "batch_size": 4},
        "retcode": {
            "already_running": 10, "missing_data": 20, "task_failed": 30, "scheduling_error": 35,
            "unhandled_exception": 40,
        },  # fmt: skip
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        sections.setdefault(section, {})[name] = value
    return write_config(root / "luigi.cfg", sections)


@pytest.fixture(scope="session")
def small_collection(tmp_path_factory):
    """A demo collection with 18 mapped images, one unmapped file and one row without a file."""
    root = tmp_path_factory.mktemp("collection")
    groups = make_collection(root, bases=SMALL_BASES)
    return root, groups


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
