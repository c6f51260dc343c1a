"""The run lock of an artifacts folder, with real processes holding it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline import runlock
from pipeline.runlock import CLAIM, PARTICIPANTS, RunLock, RunLockHeld

HOLDER = """
import sys, time
from pipeline import runlock
runlock.hold(sys.argv[1], sys.argv[2], central=sys.argv[3] == "central", heartbeat=0.2, stale_after=2)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def holders():
    """Start processes that hold a folder (as a run does) and stay; all are killed afterwards."""
    started = []

    def start(folder, date, scheduler="local"):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder), date, scheduler], cwd=root, stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_run_of_another_date_is_stopped_touching_nothing(tmp_path, holders):
    first = holders(tmp_path, "2026-02-01")
    before = listing(tmp_path)
    with pytest.raises(RunLockHeld) as info:
        RunLock(tmp_path, "2026-02-02").acquire()
    message = str(info.value)
    assert "the run of 2026-02-01, since " in message and f"on host {socket.gethostname()}, pid {first.pid}" in message
    assert "the run of 2026-02-02 stops without touching it" in message and "\n" not in message
    assert (
        listing(tmp_path) == before == [CLAIM, PARTICIPANTS, f"{PARTICIPANTS}/{socket.gethostname()}-{first.pid}.json"]
    )
    with pytest.raises(RunLockHeld):  # the same date on a local scheduler does not share the folder either
        RunLock(tmp_path, "2026-02-01").acquire()


def test_a_sigkilled_holder_frees_the_folder_at_once(tmp_path, holders):
    first = holders(tmp_path, "2026-02-01")
    first.send_signal(signal.SIGKILL)
    first.wait()
    lock = RunLock(tmp_path, "2026-02-02").acquire()
    claim = json.loads((tmp_path / CLAIM).read_text())
    assert claim["date"] == "2026-02-02" and claim["pid"] == os.getpid()
    lock.release()
    assert listing(tmp_path) == [] or listing(tmp_path) == [
        PARTICIPANTS,
        f"{PARTICIPANTS}/{socket.gethostname()}-{first.pid}.json",
    ]


def claim_from_another_host(folder, date, age):
    """A claim and participant file as a run on another machine writes them, last touched ``age`` s ago."""
    (folder / PARTICIPANTS).mkdir(parents=True)
    who = {"host": "elsewhere.example", "pid": 4242, "ticks": 1}
    (folder / CLAIM).write_text(
        json.dumps({**who, "date": date, "central": False, "since": "2026-02-01T02:00:00+00:00"})
    )
    participant = folder / PARTICIPANTS / "elsewhere.example-4242.json"
    participant.write_text(json.dumps({**who, "date": date}))
    then = time.time() - age
    os.utime(participant, (then, then))


@pytest.mark.parametrize("age, taken", [(5, False), (120, True)])
def test_a_claim_from_another_host_is_stale_only_without_heartbeats(tmp_path, age, taken):
    claim_from_another_host(tmp_path, "2026-02-01", age)
    lock = RunLock(tmp_path, "2026-02-02", stale_after=60)
    if taken:
        lock.acquire()
        assert json.loads((tmp_path / CLAIM).read_text())["host"] == socket.gethostname()
        lock.release()
    else:
        with pytest.raises(RunLockHeld, match="on host elsewhere.example, pid 4242"):
            lock.acquire()
        assert json.loads((tmp_path / CLAIM).read_text())["host"] == "elsewhere.example"


def test_workers_of_one_run_on_a_central_scheduler_share_the_folder(tmp_path, holders):
    holders(tmp_path, "2026-02-01", "central")
    second = holders(tmp_path, "2026-02-01", "central")  # joins
    with pytest.raises(RunLockHeld):
        RunLock(tmp_path, "2026-02-02", central=True).acquire()
    lock = RunLock(tmp_path, "2026-02-01", central=True).acquire()
    lock.release()  # others remain: the claim stays
    assert (tmp_path / CLAIM).exists()
    second.kill()
    second.wait()
    assert (tmp_path / CLAIM).exists()  # the first is still there


def test_the_last_process_of_a_run_removes_the_claim_and_heartbeats_keep_it_alive(tmp_path):
    lock = RunLock(tmp_path, "2026-02-01", heartbeat=0.05, stale_after=1).acquire()
    participant = tmp_path / PARTICIPANTS / f"{socket.gethostname()}-{os.getpid()}.json"
    os.utime(participant, (0, 0))
    deadline = time.monotonic() + 10
    while participant.stat().st_mtime == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert participant.stat().st_mtime > time.time() - 60  # the heartbeat touched it
    lock.release()
    assert listing(tmp_path) == []


def test_one_process_runs_its_dates_one_after_another(tmp_path):
    runlock.hold(tmp_path, "2026-02-01")
    runlock.hold(tmp_path, "2026-02-02")  # the same process: its next run takes the claim over
    assert json.loads((tmp_path / CLAIM).read_text())["date"] == "2026-02-02"
    runlock.release_all()
    assert listing(tmp_path) == []


def test_a_claim_made_while_a_stale_one_is_broken_is_put_back(tmp_path, monkeypatch):
    claim_from_another_host(tmp_path, "2026-02-01", 600)
    lock = RunLock(tmp_path, "2026-02-02", stale_after=60)
    stale = json.loads((tmp_path / CLAIM).read_text())
    fresh = {**stale, "host": "third.example", "date": "2026-02-03"}
    real_rename = os.rename

    def rename_after_another_claims(src, dst):  # another process broke the stale claim and made its own first
        (tmp_path / CLAIM).write_text(json.dumps(fresh))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_after_another_claims)
    lock._break(stale)
    assert json.loads((tmp_path / CLAIM).read_text()) == fresh


def test_a_heartbeat_never_writes_the_participant_file_again_after_release(tmp_path, monkeypatch):
    real_touch = RunLock.touch

    def slow_touch(lock):  # a slow file server: the release comes while a heartbeat is under way
        time.sleep(0.2)
        real_touch(lock)

    monkeypatch.setattr(RunLock, "touch", slow_touch)
    lock = RunLock(tmp_path, "2026-02-01", heartbeat=0.01).acquire()
    time.sleep(0.05)
    lock.release()
    time.sleep(0.4)
    assert listing(tmp_path) == []
