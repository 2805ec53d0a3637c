"""pescador_fp.ray.remote on a real Ray cluster: the same output as background, exactly once when a
part's process is killed, errors as themselves, nothing left running after a break, parts on two nodes.

Run by tests/test_ray.py in a pytest process of its own (it says why). One local cluster
(``num_cpus=2``) serves the whole session; the last test replaces it with two simulated nodes.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from helpers import same_items

import pescador_fp as pf
from pescador_fp._ipc.codec import RemoteTraceback

ray = pytest.importorskip("ray")
pfr = pytest.importorskip("pescador_fp.ray")

pytestmark = pytest.mark.timeout(180)

# Ray's worker processes cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

_STORE_BYTES = 200 * 2**20
_DEADLINE_S = 30.0


def _start_local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=_STORE_BYTES, log_to_driver=False)


@pytest.fixture(scope="session")
def cluster():
    """One local Ray cluster for the session: two CPUs, a small object store."""
    if not ray.is_initialized():
        _start_local_cluster()
    yield
    ray.shutdown()


def _sources():
    return [pf.from_arrays({"x": np.arange(i * 100, i * 100 + 24).reshape(12, 2)}) for i in range(6)]


def _gen(n):
    yield from range(n)


PIPELINES = {
    # divided at the mux's sources; shuffle, map and batch run in each part
    "mux_shuffle_map_batch": lambda: (
        pf.mux(_sources(), n_active=4, rate=None, mode="exhaustive", seed=0)
        | pf.shuffle(8)
        | pf.map(lambda d: d["x"] * 2)
        | pf.batch(4, partial=True)
    ),
    # a collection dealt in turn, one output per item
    "from_iterable_map": lambda: pf.from_iterable(range(60)) | pf.map(lambda x: x * 3),
    # dealt in turn, several or no outputs per item: merged group by group
    "from_iterable_filter_mapcat": lambda: (
        pf.from_iterable(range(60)) | pf.filter(lambda x: x % 3) | pf.mapcat(lambda x: [x] * (x % 4))
    ),
    # nothing divides: background feeds the head's items; here each part runs the head itself
    "fed_stream_map_filter": lambda: (
        pf.stream(_gen, 80) | pf.map(lambda x: x + 1) | pf.filter(lambda x: x % 5)
    ),
    "fed_stream_batch": lambda: pf.stream(_gen, 50) | pf.map(lambda x: x + 1) | pf.batch(3, partial=True),
    # a weighted mux: parts merged in proportion to their weights
    "weighted_mux": lambda: (
        pf.mux(_sources(), n_active=4, rate=2, weights=[1, 2, 3, 1, 2, 3], mode="exhaustive", seed=1)
        | pf.map(lambda d: d["x"])
    ),
    # a weighted mux under a filter: a worker picked per input item (marks); the last half of
    # source 0 is filtered out, so its worker's last groups are empty while the others go on
    "weighted_mux_filter": lambda: (
        pf.mux(_sources()[:3], n_active=3, rate=None, weights=[6, 2, 1], mode="exhaustive", seed=1)
        | pf.map(lambda d: int(d["x"][0]))
        | pf.filter(lambda x: x % 7 and not 12 <= x < 100)
    ),
    # a shard of a rank, run over Ray
    "shard_of_collection": lambda: pf.from_iterable(range(40)) | pf.shard(1, 2) | pf.map(lambda x: -x),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("workers", [2, 3])
def test_remote_yields_what_background_yields(cluster, name, workers):
    stream = PIPELINES[name]()
    expected = list((stream | pf.background(workers=workers)).iterate(seed=7))
    # 3 parts on 2 CPUs: each asks for half a CPU, so that all of them run at once
    op = pfr.remote(workers=workers, prefetch=2, resources={"CPU": 0.5})
    got = list((stream | op).iterate(seed=7))
    assert len(got) == len(expected) > 0
    assert same_items(got, expected)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("fed", [False, True])
def test_remote_batches_as_the_foreground_does(cluster, fed, partial):
    # Each part dropped (or yielded short) the last batch of its own rows: 100 rows | batch(32) in
    # 4 parts gave 0 batches, not 3; the parts' remainders are now pooled as background pools them.
    head = pf.stream(_gen, 100) | pf.map(lambda x: x) if fed else pf.from_arrays(np.arange(100))
    stream = head | pf.batch(32, partial=partial)
    got = list((stream | pfr.remote(workers=4, resources={"CPU": 0.5})).iterate(seed=2))
    assert [len(b) for b in got] == [len(b) for b in stream] == ([32, 32, 32, 4] if partial else [32] * 3)
    assert same_items(got, list((stream | pf.background(workers=4)).iterate(seed=2)))
    rows = sorted(int(r) for b in got for r in b)
    assert rows == list(range(100)) if partial else len(set(rows)) == 96


def test_a_pure_pipeline_is_pure_without_a_pass_seed(cluster):
    stream = pf.from_iterable(range(40)) | pf.shuffle(8, seed=3) | pf.map(lambda x: x * 2)
    op = pfr.remote(workers=2)
    assert list(stream | op) == list(stream | op) == list(stream | pf.background(workers=2))


@pytest.mark.parametrize("seed", [5, None])
def test_a_saved_state_resumes_with_the_rest_of_the_pass(cluster, seed):
    stream = pf.from_iterable(range(40)) | pf.shuffle(8) | pf.map(lambda x: x * 2) | pfr.remote(workers=2)
    items = stream.iterate(seed=seed)
    [next(items) for _ in range(7)]
    state = items.state()
    rest = list(items)
    assert list(stream.iterate(seed=seed, state=state)) == rest


def test_one_worker_yields_the_foreground_pass(cluster):
    stream = pf.from_iterable(range(30)) | pf.shuffle(8) | pf.map(lambda x: x * 2)
    assert list((stream | pfr.remote(workers=1)).iterate(seed=4)) == list(stream.iterate(seed=4))


def test_parts_that_reserve_nothing_run_without_a_placement_group(cluster):
    stream = pf.from_iterable(range(40)) | pf.map(lambda x: x + 1)
    op = pfr.remote(workers=3, resources={"CPU": 0})
    assert list(stream | op) == list(range(1, 41))


class _Slow:
    """A map that takes a moment per item and notes, once per process, the pid of the process it runs in."""

    def __init__(self, folder: str, pause_s: float = 0.005) -> None:
        self.folder = folder
        self.pause_s = pause_s

    def __call__(self, x):
        mark = Path(self.folder, str(os.getpid()))
        if not mark.exists():
            mark.touch()
        time.sleep(self.pause_s)
        return x


def _pids(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir()}


def _wait_for_pids(folder: Path, count: int) -> set[int]:
    end = time.monotonic() + _DEADLINE_S
    while len(_pids(folder)) < count and time.monotonic() < end:
        time.sleep(0.01)
    return _pids(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _run_killing_one_part(stream, seed, folder: Path, after: int) -> list:
    items = (stream | pfr.remote(workers=2, prefetch=2)).iterate(seed=seed)
    got = [next(items) for _ in range(after)]
    pids = _wait_for_pids(folder, 2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    got += list(items)
    assert len(_pids(folder) - pids) >= 1, "the killed part ran again in a new process"
    assert not _alive(victim)
    return got


def test_killing_a_part_mid_pass_changes_nothing(cluster, tmp_path):
    stream = pf.from_iterable(range(300)) | pf.shuffle(16) | pf.map(_Slow(str(tmp_path)))
    expected = list((stream | pfr.remote(workers=2)).iterate(seed=11))
    for p in tmp_path.iterdir():
        p.unlink()
    got = _run_killing_one_part(stream, 11, tmp_path, after=20)
    assert got == expected


def test_an_unseeded_pass_replays_identically_after_a_kill(cluster, tmp_path):
    # No seed anywhere: the retried part must shuffle as its first try did, or items repeat and go missing.
    stream = pf.from_iterable(range(300)) | pf.shuffle(64) | pf.map(_Slow(str(tmp_path)))
    got = _run_killing_one_part(stream, None, tmp_path, after=20)
    assert sorted(got) == list(range(300))
    assert got != list(range(300))


def test_a_part_killed_with_no_retries_left_is_a_worker_error(cluster, tmp_path):
    stream = pf.from_iterable(range(300)) | pf.map(_Slow(str(tmp_path)))
    items = (stream | pfr.remote(workers=2, prefetch=2, max_retries=0)).iterate(seed=0)
    [next(items) for _ in range(10)]
    os.kill(min(_wait_for_pids(tmp_path, 2)), signal.SIGKILL)
    with pytest.raises(pf.WorkerError, match=r"the Ray task of part \d failed after its retries"):
        list(items)


def _fail_at_7(x):
    if x == 7:
        raise ValueError(f"bad item {x}")
    return x


def test_an_error_in_a_part_arrives_as_itself_with_the_remote_traceback(cluster):
    stream = pf.from_iterable(range(20)) | pf.map(_fail_at_7) | pfr.remote(workers=2)
    with pytest.raises(ValueError, match="bad item 7") as caught:
        list(stream)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raised in Ray part 1" in str(cause) and "_fail_at_7" in str(cause)
    assert "\x1b[" not in str(cause)  # Ray colours the task's name for terminals


def test_a_cluster_too_small_for_the_parts_is_a_clear_error(cluster):
    stream = pf.from_iterable(range(20)) | pfr.remote(workers=3)
    with pytest.raises(pf.WorkerError, match=r"workers=3 .*'CPU': 1\.0.*'CPU': 2\.0"):
        list(stream)


def test_a_pass_that_finds_no_room_says_what_holds_the_cluster(cluster, monkeypatch):
    stream = pf.from_iterable(range(20)) | pfr.remote(workers=2)
    held = stream.iterate(seed=0)
    # This pass holds both CPUs of the cluster until it is closed. It waits as long as a user's would: the
    # reservation of an earlier case's closed pass is freed, not at once (1 s was too short on a loaded
    # machine).
    next(held)
    monkeypatch.setattr(pfr, "_RESERVE_TIMEOUT_S", 1.0)
    try:
        with pytest.raises(pf.WorkerError, match=r"waited 1 s for room .* close open iterators"):
            list(stream.iterate(seed=1))
    finally:
        held.close()
    monkeypatch.setattr(
        pfr, "_RESERVE_TIMEOUT_S", 60.0
    )  # the closed pass's reservation is freed, not at once
    assert list(stream.iterate(seed=1)) == list(range(20))


def _our_groups():
    return [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]


class _Counting:
    """A map that adds a byte per item to a file named after the process it runs in."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, x):
        with open(Path(self.folder, str(os.getpid())), "ab") as out:
            out.write(b".")
        time.sleep(0.001)
        return x


def _progress(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def _interrupt_at_5(x):
    if x == 5:
        raise KeyboardInterrupt  # as Ctrl-C in the training loop
    return x


@pytest.mark.parametrize("how", ["break", "close", "gc", "interrupt"])
def test_leaving_the_loop_stops_every_task(cluster, tmp_path, how):
    stream = pf.from_iterable(range(10**9)) | pf.map(_Counting(str(tmp_path))) | pfr.remote(workers=2)
    if how == "break":
        for i, _ in enumerate(stream.iterate(seed=0)):
            if i == 10:
                break
    elif how == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            for _ in stream | pf.map(_interrupt_at_5):
                pass
    else:
        items = stream.iterate(seed=0)
        for _ in range(10):
            next(items)
        if how == "close":
            items.close()
        else:
            del items
            gc.collect()
    assert len(_progress(tmp_path)) == 2
    before = _progress(tmp_path)
    time.sleep(0.5)  # a task still running would add hundreds of items meanwhile
    assert _progress(tmp_path) == before, "a part still runs"
    assert _our_groups() == []


class _StuckAt:
    """A map that, at item ``at``, stays in a call for ``seconds`` and then leaves a file behind."""

    def __init__(self, at: int, seconds: float, folder: str) -> None:
        self.at, self.seconds, self.folder = at, seconds, folder

    def __call__(self, x):
        if x == self.at:
            Path(self.folder, "pid").write_text(str(os.getpid()))
            time.sleep(self.seconds)
            Path(self.folder, "went on").touch()
        return x


def test_a_part_stuck_in_a_call_is_stopped_on_close(cluster, tmp_path):
    stream = pf.from_iterable(range(100)) | pf.map(_StuckAt(3, 3.0, str(tmp_path))) | pfr.remote(workers=2)
    items = stream.iterate(seed=0)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    end = time.monotonic() + _DEADLINE_S
    while not Path(tmp_path, "pid").exists() and time.monotonic() < end:
        time.sleep(0.01)
    items.close()  # part 1 is inside the call: interrupted, or killed after a grace
    time.sleep(4.0)  # past the end of the call, had it gone on
    assert not Path(tmp_path, "went on").exists()
    assert _our_groups() == []


def test_a_process_in_no_cluster_starts_a_local_one(cluster, monkeypatch):
    ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        assert list(pf.from_iterable(range(6)) | pf.map(abs) | pfr.remote(workers=2)) == list(range(6))
        assert ray.is_initialized()
    finally:
        ray.shutdown()
        _start_local_cluster()  # the session's cluster again, for the tests that follow


class _Where:
    def __call__(self, x):
        return x, ray.get_runtime_context().get_node_id()


def test_parts_run_on_both_nodes_of_a_two_node_cluster():
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the session's local cluster: this test makes its own
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": _STORE_BYTES // 2, "include_dashboard": False},
    )
    try:
        nodes.add_node(num_cpus=1, object_store_memory=_STORE_BYTES // 2)
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()
        stream = pf.from_iterable(range(40)) | pf.map(_Where()) | pfr.remote(workers=2)
        got = list(stream.iterate(seed=0))
        assert [x for x, _ in got] == list(range(40))
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(alive) == 2
        assert {node for _, node in got} == alive
    finally:
        ray.shutdown()
        nodes.shutdown()
