"""Sharded stages on Luigi's central scheduler: two worker processes against one luigid."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from luigi.rpc import RemoteScheduler

from pipeline.output import read_similarities

from .conftest import write_config
from .test_nightly import RESULT, environment, project, reference, report  # noqa: F401 (reference: a fixture, the single local run)

#: Real processes and several full runs each: the full tier (make test-all, .ci/run).
pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
SHARDS = 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def luigid(tmp_path):
    """A central scheduler on a free port of 127.0.0.1, forgetting a dead worker after 2 s."""
    port = free_port()
    (tmp_path / "luigid-logs").mkdir()
    config = write_config(
        tmp_path / "luigid.cfg",
        {"scheduler": {"worker_disconnect_delay": 2, "retry_delay": 1, "state_path": tmp_path / "state.pickle"}},
    )
    process = subprocess.Popen(
        [os.path.join(BIN, "luigid"), "--port", str(port), "--logdir", str(tmp_path / "luigid-logs")],
        env={**os.environ, "LUIGI_CONFIG_PATH": str(config)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("luigid did not start")
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(30)


def start_worker(root, port, name, **faults):
    """``luigi --module tests.faults Nightly`` (the pipeline's tasks with the tiny model, and ``faults``)
    against the central scheduler, as one machine's worker would run it."""
    command = [
        os.path.join(BIN, "luigi"),
        "--module",
        "tests.faults",
        "Nightly",
        "--date",
        "2026-01-01",
        "--scheduler-host",
        "127.0.0.1",
        "--scheduler-port",
        str(port),
        "--workers",
        "1",
        "--worker-keep-alive",
        "--lock-pid-dir",
        str(root / f"lock-{name}"),
    ]
    log = open(root / f"{name}.log", "w")
    return subprocess.Popen(command, cwd=root, env=environment(root, **faults), stdout=subprocess.DEVNULL, stderr=log)


#: The sharded stages' tasks.
KINDS = ("FeatureShard", "HistogramShard", "NeighbourShard")


def sharded_project(root, content):
    return project(
        root, content, **{f"{section}__shards": SHARDS for section in ("features", "histograms", "neighbours")}
    )


def shard_runs(root, names, kind="FeatureShard"):
    """How many times each shard of ``kind`` began to run, over the workers' logs."""
    runs = {}
    for name in names:
        for line in (root / f"{name}.log").read_text().splitlines():
            if f"running   {kind}(" in line:
                shard = int(line.split("shard=")[1].split(",")[0].rstrip(")"))
                runs[shard] = runs.get(shard, 0) + 1
    return runs


#: A worker's exit codes: 0, or 10 (luigi.cfg's already_running) when another worker ran
#: some of the tasks it scheduled.
SHARED = (0, 10)


def wait(process, seconds=600):
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_two_workers_share_the_shards_and_give_the_local_result(small_collection, reference, luigid, tmp_path):
    root = sharded_project(tmp_path, small_collection[0])
    # each worker holds its first feature shard until the other holds one too: both take part,
    # however long either takes to start
    workers = [start_worker(root, luigid, name, FAULT_PAUSE_AT=f"FeatureShard:{root / 'release'}") for name in "ab"]
    deadline = time.monotonic() + 300
    while len(shard_runs(root, ["a", "b"])) < 2:
        assert all(w.poll() is None for w in workers) and time.monotonic() < deadline
        time.sleep(0.1)
    (root / "release").touch()
    codes = [wait(w) for w in workers]
    assert all(code in SHARED for code in codes), (root / "a.log").read_text()[-3000:] + (root / "b.log").read_text()[
        -3000:
    ]
    assert report(root)["status"] == "ok"
    for kind in KINDS:
        assert shard_runs(root, ["a", "b"], kind) == {shard: 1 for shard in range(SHARDS)}, kind
    assert all(sum(len(shard_runs(root, [name], kind)) for kind in KINDS) for name in ("a", "b"))  # both worked
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    for key in RESULT:
        np.testing.assert_array_equal(result[key], reference[key], err_msg=key)


@pytest.mark.parametrize("kind", ["FeatureShard", "NeighbourShard"])
def test_a_worker_killed_mid_shard_leaves_it_to_the_other(small_collection, reference, luigid, tmp_path, kind):
    root = sharded_project(tmp_path, small_collection[0])
    # a, alone, takes the stages up to a first shard of ``kind``, and dies once it has done part of it
    a = start_worker(root, luigid, "a", FAULT_KILL_AT=f"{kind}:1")
    assert wait(a) == -signal.SIGKILL, (root / "a.log").read_text()[-3000:]
    b = start_worker(root, luigid, "b")
    # luigid forgets the dead worker after worker_disconnect_delay when it prunes (every minute
    # by itself: asked here, every second), fails its shard and, after retry_delay, gives it to
    # b, which waits for it (--worker-keep-alive)
    scheduler = RemoteScheduler(f"http://127.0.0.1:{luigid}")
    deadline = time.monotonic() + 600
    while b.poll() is None and time.monotonic() < deadline:
        scheduler.prune()
        time.sleep(1)
    assert wait(b) in SHARED, (root / "b.log").read_text()[-3000:]
    assert report(root)["status"] == "ok"
    killed = list(shard_runs(root, ["a"], kind))[-1]  # the shard a was running
    assert killed in shard_runs(root, ["b"], kind)
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    for key in RESULT:
        np.testing.assert_array_equal(result[key], reference[key], err_msg=key)
