"""One run at a time per artifacts folder, across processes and machines that share the folder.

The folder holds a claim, ``run.lock``: a JSON file naming the run (its date, and whether it
runs on Luigi's central scheduler), the host and process that made it and since when. It is
made with ``link(2)`` of a finished file, which is atomic on local file systems and NFS. Every
process taking part in the run (the one that made the claim, and the workers of the same run
on a central scheduler, which join it) keeps a participant file under ``run.lock.d/`` and
touches it every ``heartbeat`` seconds. A claim is alive while one of its participants is:
a process on this host while it exists (checked by its pid and start time: a SIGKILLed run
frees the folder at once), a process on another host while its file was touched less than
``stale_after`` seconds ago. The age is measured against the file server's own clock (the
modification time of a file made for the purpose), so clocks that differ between hosts do
not matter. A stale claim is broken and taken; a live one of another run stops the new
run with :class:`RunLockHeld` before it touches anything.
"""

import atexit
import datetime
import json
import logging
import os
import socket
import threading
import uuid

from .errors import PipelineError, named
from .settings import Lock

logger = logging.getLogger(__name__)

CLAIM = "run.lock"
PARTICIPANTS = "run.lock.d"
#: Defaults of ``[lock] heartbeat`` and ``[lock] stale_after``, in seconds.
HEARTBEAT, STALE_AFTER = Lock.heartbeat, Lock.stale_after


class RunLockHeld(PipelineError):
    """Another run holds the artifacts folder."""


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _start_ticks(pid):
    """When process ``pid`` started (clock ticks since boot), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid, ticks):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return ticks is None or _start_ticks(pid) in (None, ticks)  # a reused pid is another process


def _read(path):
    """(content, modification time) of a JSON file read through an open file (NFS refreshes the
    attributes on open), or (None, None) when it is gone or unreadable."""
    try:
        with open(path) as f:
            mtime = os.fstat(f.fileno()).st_mtime
            return json.loads(f.read()), mtime
    except (OSError, ValueError):
        return None, None


def _write_new(path, content):
    """Write ``content`` as JSON to a new file beside ``path`` and return that file's name."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "x") as f:
        json.dump(content, f)
    return tmp


class RunLock:
    """The claim of one process on an artifacts folder for the run of ``date``.

    Parameters
    ----------
    folder : str
        The artifacts folder.
    date : str
        The run's identity: processes of the same date on a central scheduler share the folder.
    central : bool
        Whether this process runs on Luigi's central scheduler (which lets workers of one run
        share the work); two processes on local schedulers never share a folder.
    """

    def __init__(self, folder, date, central=False, heartbeat=HEARTBEAT, stale_after=STALE_AFTER):
        self.folder, self.date, self.central = folder, date, central
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.claim = os.path.join(folder, CLAIM)
        self.participants = os.path.join(folder, PARTICIPANTS)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "ticks": _start_ticks(os.getpid())}
        self.participant = os.path.join(self.participants, f"{self.me['host']}-{self.me['pid']}.json")
        self.held = False

    def _mine(self, claim):
        return claim.get("host") == self.me["host"] and claim.get("pid") == self.me["pid"]

    def _shares(self, claim):
        return claim.get("date") == self.date and self.central and claim.get("central")

    def acquire(self):
        """Take the folder, or join the run that holds it. Raises RunLockHeld when another run
        holds it; writes nothing then."""
        for _ in range(5):  # a claim that vanishes or is broken meanwhile: look again
            claim, _ = _read(self.claim)
            if claim is None:
                if os.path.exists(self.claim):  # made whole (link, rename): it is damaged
                    self._break_damaged()
                    continue
                self._join()
                if self._link_claim():
                    return self._held()
                continue
            if self._mine(claim) or self._shares(claim):
                self._join()
                if self._mine(claim) and claim.get("date") != self.date:  # this process's next run
                    self._replace_claim()
                return self._held()
            if self._alive(claim):
                self._leave()
                raise RunLockHeld(self.message(claim))
            self._break(claim)
        self._leave()
        raise RunLockHeld(f"the claim {self.claim} keeps changing; another run is starting: try again later")

    def message(self, claim):
        return (
            f"another run holds the artifacts folder {os.path.abspath(self.folder)}: the run of {claim.get('date')}, "
            f"since {claim.get('since')}, on host {claim.get('host')}, pid {claim.get('pid')}; the run of {self.date} "
            f"stops without touching it (a claim whose processes have ended is taken over: at once on the same "
            f"host, after {named('stale_after')}={self.stale_after:g} s without a heartbeat from another host)"
        )

    def _claim_content(self):
        return {**self.me, "date": self.date, "central": self.central, "since": _now()}

    def _link_claim(self):
        tmp = _write_new(self.claim, self._claim_content())
        try:
            os.link(tmp, self.claim)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _replace_claim(self):
        os.replace(_write_new(self.claim, self._claim_content()), self.claim)

    def _join(self):
        os.makedirs(self.participants, exist_ok=True)
        os.replace(_write_new(self.participant, {**self.me, "date": self.date}), self.participant)

    def _leave(self):
        try:
            os.unlink(self.participant)
        except FileNotFoundError:
            pass

    def _held(self):
        self.held = True
        _HEARTBEATS.add(self)
        return self

    def _server_now(self):
        """The file server's current time: the modification time of a file made now."""
        probe = _write_new(os.path.join(self.folder, CLAIM + ".probe"), {})
        try:
            return os.stat(probe).st_mtime
        finally:
            os.unlink(probe)

    def _live_participants(self, date):
        """Participant files of other processes of the run of ``date`` (of any run: None) that are alive."""
        try:
            names = os.listdir(self.participants)
        except FileNotFoundError:
            return []
        alive, now = [], None
        for name in names:
            path = os.path.join(self.participants, name)
            if path == self.participant or not name.endswith(".json"):
                continue
            who, mtime = _read(path)
            if who is None or (date is not None and who.get("date") != date):
                continue
            if who.get("host") == self.me["host"]:
                if _pid_alive(who.get("pid", -1), who.get("ticks")):
                    alive.append(path)
                continue
            now = self._server_now() if now is None else now
            if now - mtime < self.stale_after:
                alive.append(path)
        return alive

    def _alive(self, claim):
        return bool(self._live_participants(claim.get("date")))

    def _break(self, claim):
        """Set a stale claim aside, unless another process took the folder meanwhile."""
        aside = f"{self.claim}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.claim, aside)
        except FileNotFoundError:
            return
        moved, _ = _read(aside)
        if moved != claim:  # a new claim was made meanwhile: put it back
            try:
                os.link(aside, self.claim)
            except FileExistsError:
                pass
        os.unlink(aside)

    def _break_damaged(self):
        """Remove a claim that cannot be read (truncated, zeroed, unreadable), unless a process of
        some run is alive: that one's claim it may be."""
        alive = self._live_participants(None)
        if alive:
            self._leave()
            raise RunLockHeld(
                f"the claim {self.claim} cannot be read, and a process of a run is alive ({alive[0]}); "
                "the run stops without touching the folder: try again when that run has ended"
            )
        logger.warning("the claim %s cannot be read (a damaged file): removed, the folder taken", self.claim)
        aside = f"{self.claim}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.claim, aside)
            os.unlink(aside)
        except FileNotFoundError:
            pass

    def touch(self):
        """The heartbeat: the participant file's time set to the file server's now."""
        try:
            os.utime(self.participant)
        except FileNotFoundError:  # removed by hand: write it again
            self._join()

    def release(self):
        """Leave the run; the last process of the run removes the claim."""
        if not self.held or os.getpid() != self.me["pid"]:
            return
        self.held = False
        _HEARTBEATS.discard(self)
        self._leave()
        claim, _ = _read(self.claim)
        if claim is not None and (self._mine(claim) or self._shares(claim)) and not self._live_participants(self.date):
            for remove in (os.unlink, os.rmdir):
                try:
                    remove(self.claim if remove is os.unlink else self.participants)
                except OSError:  # gone already, or another process has joined meanwhile
                    pass


class _Heartbeats:
    """One daemon thread touching the participant file of every lock this process holds."""

    def __init__(self):
        self.locks, self.guard, self.thread, self.wake = set(), threading.Lock(), None, threading.Event()

    def add(self, lock):
        with self.guard:
            self.locks.add(lock)
            self.wake.set()  # a shorter heartbeat than the thread waits for: start over
            if self.thread is None or not self.thread.is_alive() or self.thread.pid != os.getpid():
                self.thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
                self.thread.pid = os.getpid()
                self.thread.start()

    def discard(self, lock):
        with self.guard:
            self.locks.discard(lock)

    def _beat(self):
        while True:
            with self.guard:  # a lock released meanwhile is not touched (its file not written again)
                for lock in self.locks:
                    try:
                        lock.touch()
                    except OSError:  # a full or unreachable disk: the run itself reports it
                        pass
                wait = min((lock.heartbeat for lock in self.locks), default=HEARTBEAT)
            self.wake.wait(wait)
            self.wake.clear()


_HEARTBEATS = _Heartbeats()
_HELD = {}


def hold(folder, date, central=False, heartbeat=HEARTBEAT, stale_after=STALE_AFTER):
    """Hold ``folder`` for the run of ``date`` until this process ends (or joins the run of the
    same date on a central scheduler). Raises RunLockHeld when another run holds it."""
    key = os.path.realpath(folder)
    held = _HELD.get(key)
    if held is not None and held.held and held.date == date and held.me["pid"] == os.getpid():
        return held
    lock = RunLock(folder, date, central, heartbeat, stale_after)
    lock.acquire()
    if held is not None:  # this process's claim on the folder, now for another date
        held.held = False
        _HEARTBEATS.discard(held)
    _HELD[key] = lock
    return lock


@atexit.register
def release_all():
    """Leave every run this process holds (as when it ends)."""
    for lock in list(_HELD.values()):
        try:
            lock.release()
        except OSError:
            pass
