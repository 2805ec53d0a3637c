"""pescador_fp.jax.device_put: batches arrive on the devices in order, sharded over 4 CPU devices,
each process loads its own part, errors arrive as themselves, and closing leaves no thread or worker.

Run by tests/test_jax.py in a pytest process of its own (it says why)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import numpy as np
import pytest
from helpers import Recorder, own_shm_entries

import pescador_fp as pf

jax = pytest.importorskip("jax")
pfj = pytest.importorskip("pescador_fp.jax")

pytestmark = pytest.mark.timeout(120)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "pescador_fp.jax.device_put"]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = own_shm_entries()
    yield
    end = time.monotonic() + 5
    while (multiprocessing.active_children() or prefetch_threads()) and time.monotonic() < end:
        time.sleep(0.02)
    assert prefetch_threads() == []
    assert multiprocessing.active_children() == []
    assert own_shm_entries() == before


def batches(n=40, size=8):
    return pf.from_arrays(
        {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2), "id": np.arange(n)}
    ) | pf.batch(size)


def test_batches_arrive_on_the_device_in_order():
    stream = batches()
    got = list(pfj.device_put(stream, jax.devices()[1]))
    want = list(stream)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        assert isinstance(g["x"], jax.Array) and g["x"].devices() == {jax.devices()[1]}
        assert np.array_equal(np.asarray(g["x"]), w["x"]) and np.array_equal(np.asarray(g["id"]), w["id"])


def test_non_array_leaves_pass_through():
    stream = pf.from_iterable([{"x": np.ones(2), "name": "a", "n": 3}])
    (item,) = list(pfj.device_put(stream))
    assert isinstance(item["x"], jax.Array) and item["name"] == "a" and item["n"] == 3


def test_a_sharding_over_four_devices_spreads_each_batch():
    assert jax.device_count() == 4, "the conftest sets XLA_FLAGS=--xla_force_host_platform_device_count=4"
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    got = list(pfj.device_put(batches(), sharding))
    assert len(got) == 5
    for b, w in zip(got, batches()):
        assert b["x"].sharding == sharding and len(b["x"].addressable_shards) == 4
        assert np.array_equal(np.asarray(b["x"]), w["x"])

    @jax.jit
    def step(x):
        return (x * 2).sum()

    assert float(step(got[0]["x"])) == float(2 * next(iter(batches()))["x"].sum())


def test_each_process_loads_its_own_part(monkeypatch):
    monkeypatch.setattr(pfj, "_processes", lambda: (1, 2))  # as process 1 of 2
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    got = list(pfj.device_put(batches(), sharding).iterate(seed=0))
    want = list((batches() | pf.shard(1, 2)).iterate(seed=0))
    assert [np.asarray(b["id"]).tolist() for b in got] == [w["id"].tolist() for w in want]


def test_at_most_prefetch_batches_are_pulled_ahead():
    recorder = Recorder(None)  # endless
    it = iter(pfj.device_put(recorder.stream() | pf.map(np.array), prefetch=3))
    next(it)
    time.sleep(0.3)  # let the thread fill its slots
    assert recorder.pulled[-1] <= 1 + 3
    it.close()


def test_closing_stops_the_thread_and_closes_the_upstream():
    recorder = Recorder(None)
    it = iter(pfj.device_put(recorder.stream() | pf.map(np.array)))
    for _, _item in zip(range(3), it):
        pass
    it.close()
    assert prefetch_threads() == [] and recorder.closed == 1


def test_closing_stops_background_workers_upstream():
    stream = pf.from_iterable(range(10_000)) | pf.map(np.array) | pf.background(workers=2)
    it = iter(pfj.device_put(stream))
    next(it)
    it.close()
    assert prefetch_threads() == []
    end = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.02)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("how", ["close", "break", "ctrl-c"])
def test_leaving_while_a_background_upstream_is_stuck_stops_the_thread_and_the_workers(how):
    # The thread waits inside the background's next() for item 3, which never comes: leaving must
    # not wait for it (it waited 30 s, then left the thread and the worker running).
    def stuck_at_3(i):
        if i == 3:
            time.sleep(1e9)
        return np.array(i)

    stream = pf.from_iterable(range(10)) | pf.map(stuck_at_3) | pf.background(workers=1)
    it = iter(pfj.device_put(stream))
    if how == "close":
        assert [int(next(it)) for _ in range(3)] == [0, 1, 2]
        it.close()
    elif how == "break":
        for x in it:
            if int(x) == 2:
                break
        del it
    else:
        assert [int(next(it)) for _ in range(3)] == [0, 1, 2]
        # Ctrl-C raises KeyboardInterrupt however the tests were started (a shell starts a background job
        # with SIGINT ignored).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            with pytest.raises(KeyboardInterrupt):
                next(it)  # waits for item 3
        finally:
            signal.signal(signal.SIGINT, previous)
    assert prefetch_threads() == []
    end = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.02)
    assert multiprocessing.active_children() == []


def test_an_upstream_error_arrives_as_itself():
    def bad(x):
        if x == 2:
            raise KeyError("no such row")
        return np.array(x)

    it = iter(pfj.device_put(pf.from_iterable(range(5)) | pf.map(bad)))
    assert [int(x) for x in (next(it), next(it))] == [0, 1]
    with pytest.raises(KeyError, match="no such row"):
        next(it)


def test_the_result_is_a_stream_reseeded_per_epoch():
    s = pfj.device_put(pf.from_arrays(np.arange(16)) | pf.shuffle(16) | pf.batch(4))
    first = [np.asarray(b).tolist() for b in s.iterate(seed=1)]
    assert first == [np.asarray(b).tolist() for b in s.iterate(seed=1)]
    assert first != [np.asarray(b).tolist() for b in s.iterate(seed=2)]
    assert repr(s).startswith("device_put(from_arrays(") and repr(s).endswith("prefetch=2)")


def test_arguments_are_checked_when_built():
    with pytest.raises(ValueError, match="device_put: prefetch must be an integer >= 1, got 0"):
        pfj.device_put(batches(), prefetch=0)
    with pytest.raises(TypeError, match=r"device_put: sharding_or_device must be None, a jax\.Device"):
        pfj.device_put(batches(), "gpu")


MULTI_PROCESS_SCRIPT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[1]))
import numpy as np, pescador_fp as pf, pescador_fp.jax as pfj
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
train = pf.from_arrays({"x": np.arange(64, dtype=np.float32), "id": np.arange(64)}) | pf.batch(8)
ids, shapes, sums = [], [], []
for b in pfj.device_put(train, sharding).iterate(seed=0):
    shapes.append(b["id"].shape)
    ids.append(sorted(int(v) for s in b["id"].addressable_shards for v in np.asarray(s.data)))
    sums.append(float(jax.jit(lambda x: x.sum())(b["x"])))
print("RESULT " + json.dumps({"ids": ids, "shapes": shapes, "sums": sums}), flush=True)
jax.distributed.shutdown()
"""


def test_two_processes_each_load_their_part_of_global_batches(tmp_path):
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "multi.py"
    script.write_text(MULTI_PROCESS_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=90)[0] for p in procs]  # a hang fails here
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], logs
    results = [json.loads(log.split("RESULT ", 1)[1].splitlines()[0]) for log in logs]
    for i, result in enumerate(results):
        assert result["shapes"] == [[16]] * 4  # global batches: 8 rows from each process
        assert result["ids"] == [
            list(range(16 * k + i, 16 * k + 16, 2)) for k in range(4)
        ]  # its shard's rows
        assert result["sums"] == [float(sum(range(16 * k, 16 * k + 16))) for k in range(4)]
