"""Decoder processes: image files decoded one at a time per process, each within a time limit,
so that a file that hangs or crashes its decoder fails alone."""

import collections
import logging
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import time

from . import errors
from .errors import ImageError, PipelineError, named
from .images import DECODE_TIMEOUT, INPUT_SIZE, MAX_PIXELS, decode_image, without_path

#: Seconds a new decoder process may take to start (import numpy, Pillow and libvips).
START_TIMEOUT = 120.0
#: Seconds to wait for a killed decoder process to end.
STOP_TIMEOUT = 10.0

logger = logging.getLogger(__name__)


def default_processes():
    """Decoder processes when ``[images] decode_processes`` is not set: one per core this
    process may run on (on a CPU the model's threads share them; a GPU leaves them to decoding)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _serve():
    """A decoder process: decode each path received, send back (True, Decoded) or (False, reason).

    Started by :class:`_Decoder` with the file descriptor of its socket as the only argument;
    the first message names the decoding function and its settings.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the parent's to handle
    connection = multiprocessing.connection.Connection(int(sys.argv[1]))
    decode, size, max_pixels, options, names = connection.recv()
    errors.NAMES.clear()
    errors.NAMES.update(names)  # the messages name the settings as the parent's do
    connection.send("ready")
    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError):  # the parent has gone
            return
        try:
            result = (True, decode(path, size=size, max_pixels=max_pixels, **options))
        except ImageError as exc:
            result = (False, without_path(str(exc), path))
        except Exception as exc:  # a decoder bug on a crafted file fails that file, not the run
            first = without_path(str(exc).splitlines()[0], path) if str(exc) else ""
            result = (False, f"decoder error {type(exc).__name__}: {first}".rstrip(": "))
        connection.send(result)


class _Decoder:
    """One decoder process (a fresh Python, nothing inherited from a parent running TensorFlow)
    and the parent's end of its socket."""

    def __init__(self, decode, size, max_pixels, options):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the same imports
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from pipeline.decoders import _serve; _serve()", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.connection = multiprocessing.connection.Connection(ours.detach())
        self.settings = (decode, size, max_pixels, options, dict(errors.NAMES))
        self.job = None  # (position, deadline) of the file it decodes

    def wait_ready(self):
        try:
            self.connection.send(self.settings)
            if self.connection.poll(START_TIMEOUT):
                self.connection.recv()
                return
            problem = f"did not start within {START_TIMEOUT:.0f} s"
        except (EOFError, OSError):
            problem = f"ended at start ({self.death()}); its error is in the log above"
        self.stop()
        raise PipelineError(f"an image decoder process {problem}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # stuck in uninterruptible I/O (a hung network mount): let it be
            logger.warning("decoder process %d does not end; left behind", self.process.pid)
        self.connection.close()

    def death(self):
        """Why the process ended, in words."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return "not answering"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"


class DecoderPool:
    """Processes that decode image files, one file at a time each, with a time limit per file.

    A decoder that takes longer than ``timeout`` seconds on a file is killed, and one that
    dies (a crash in a native decoding library, the kernel's out-of-memory killer) is
    replaced; either way only the file it was decoding fails, with the reason, and the other
    files are decoded as if nothing had happened.

    Parameters
    ----------
    processes : int, optional
        Files decoded at once: one per core (:func:`default_processes`) when None or 0.
    timeout : float
        Seconds one file may take to decode.
    max_pixels : int
        Images with more pixels are rejected before decoding.
    decode : callable(path, size=, max_pixels=, **options) -> Decoded
        A module-level function (the processes import it): :func:`~pipeline.images.decode_image`
        by default.
    size : int
        Side of the decoded square.
    options : dict, optional
        More keyword arguments of ``decode`` (``decode_image``'s ``colour`` and ``trim``).
    """

    def __init__(
        self, processes=None, timeout=DECODE_TIMEOUT, max_pixels=MAX_PIXELS, decode=None, size=INPUT_SIZE, options=None
    ):
        self.processes = processes or default_processes()
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.decode = decode or decode_image
        self.size = size
        self.options = dict(options or {})
        #: Files decoded, by decoder (:attr:`~pipeline.images.Decoded.decoder`).
        self.decoded_by = collections.Counter()
        self._decoders = []

    def _start(self, n):
        started = [_Decoder(self.decode, self.size, self.max_pixels, self.options) for _ in range(n)]
        self._decoders.extend(started)
        for decoder in started:
            decoder.wait_ready()

    def _replace(self, decoder):
        decoder.stop()
        self._decoders.remove(decoder)
        self._start(1)

    def close(self):
        """Stop every decoder process."""
        for decoder in self._decoders:
            decoder.stop()
        self._decoders = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def imap(self, paths, stop=None):
        """Decode every file.

        Parameters
        ----------
        paths : sequence of str
        stop : threading.Event, optional
            When set, the iteration ends within half a second (a consumer in another thread
            has gone).

        Yields
        ------
        result : Decoded (what ``decode`` returns), or ImageError
            One per path, in the order of ``paths``.
        """
        paths = list(paths)
        if not paths:
            return
        self._start(min(self.processes, len(paths)) - len(self._decoders))
        window = 4 * self.processes  # decoded files held ahead of the consumer, at most
        results, sent, given = {}, 0, 0
        try:
            while given < len(paths) and not (stop is not None and stop.is_set()):
                for decoder in list(self._decoders):
                    if decoder.job is None and sent < min(len(paths), given + window):
                        try:
                            decoder.connection.send(str(paths[sent]))
                        except OSError:  # died while idle: its replacement takes the file
                            self._replace(decoder)
                            continue
                        decoder.job = (sent, time.monotonic() + self.timeout)
                        sent += 1
                if given in results:
                    yield results.pop(given)
                    given += 1
                else:
                    self._collect(results)
        finally:  # ended early: decoders still at work on this iteration's files are of no use
            for decoder in [d for d in self._decoders if d.job is not None]:
                decoder.stop()
                self._decoders.remove(decoder)

    def _collect(self, results):
        """Wait (briefly) for decoders to finish; record their results, kill those past their time."""
        busy = [d for d in self._decoders if d.job is not None]
        if not busy:  # a decoder was just replaced before it got a file
            return
        first_deadline = min(d.job[1] for d in busy)
        ready = multiprocessing.connection.wait(
            [d.connection for d in busy], timeout=max(0.0, min(first_deadline - time.monotonic(), 0.5))
        )
        for decoder in busy:
            position, deadline = decoder.job
            if decoder.connection in ready:
                try:
                    ok, value = decoder.connection.recv()
                except (EOFError, OSError):
                    results[position] = ImageError(f"the decoder process died on this file ({decoder.death()})")
                    self._replace(decoder)
                    continue
                if ok:
                    self.decoded_by[value.decoder] += 1
                results[position] = value if ok else ImageError(value)
                decoder.job = None
            elif time.monotonic() > deadline:
                results[position] = ImageError(
                    f"decoding took longer than {named('decode_timeout')}={self.timeout:g} s; the decoder was stopped"
                )
                self._replace(decoder)
