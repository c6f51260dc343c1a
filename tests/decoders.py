"""Decoding functions that misbehave on chosen files, for the decoder pool's tests (the pool's
processes import them from here)."""

import os
import signal
import time

from pipeline.images import decode_image


def misbehaving(path, **kwargs):
    """Hang on a file named hang*, crash the process on crash*, raise a bug's exception on bug*
    (one that names the file's path on leak*)."""
    name = os.path.basename(path)
    if name.startswith("hang"):
        time.sleep(120)  # far past any timeout the tests set: a pool that waits fails its test
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("bug"):
        raise struct_error("unpack requires a buffer of 4 bytes\nsecond line")
    if name.startswith("leak"):
        raise struct_error(f"cannot parse {str(path)!r} at offset 8")
    return decode_image(path, **kwargs)


class struct_error(Exception):
    """Stands for the odd exceptions decoders raise on crafted files (struct.error, IndexError...)."""


def decoder_processes():
    """PIDs of this process's running decoder processes."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"_serve" in cmdline:
            found.append(int(entry))
    return found
