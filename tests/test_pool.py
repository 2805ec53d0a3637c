"""background's arrays in shared memory blocks: owned by the consumer, recycled when dropped.

Tests that count shared memory (memory in use, a shortage, what a killed
consumer leaves) run their pipeline in a child process with a /dev/shm of its
own: a private tmpfs of a set size, mounted in a user and mount namespace
(``unshare -rm``), so that the count is ours alone and the shortage is real.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pescador_fp as pf
from pescador_fp._ipc.pool import BLOCK_MIN, size_class

START_METHODS = ["fork", "forkserver", "spawn"]
TRANSPORTS = ["linux", "portable"] if sys.platform.startswith("linux") else ["portable"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of shared memory files (/dev/shm, memfd)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            path = parts[5].strip() if len(parts) == 6 else ""
            if path.startswith(("/dev/shm/", "/memfd:")):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                found.append((start, end))
    return found


def in_shared_memory(array: np.ndarray) -> bool:
    address = array.__array_interface__["data"][0]
    return any(start <= address < end for start, end in shared_mappings())


needs_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")


def _private_shm_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True
    )
    return done.returncode == 0


needs_private_shm = pytest.mark.skipif(
    not _private_shm_works(), reason="needs unshare -rm and a tmpfs mount (a /dev/shm of the test's own)"
)


def run_with_own_shm(script: str, size: str, transport: str = "linux", timeout: float = 120) -> dict:
    """Run ``script`` (Python; it prints one JSON line last) with a /dev/shm of ``size`` of its own."""
    env = dict(os.environ, PYTHONPATH=ROOT, PESCADOR_FP_TRANSPORT=transport)
    command = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {sys.executable} -c "$0"'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command, textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _item(i: int, size: int, kind: int) -> object:
    x = np.full(size, i, np.int32)
    if kind == 0:
        return x
    if kind == 1:
        return {"x": x, "label": np.int64(i), "small": np.full(3, i)}
    return (x, i, x[: size // 2].copy())


def _check(item: object, i: int, size: int, kind: int) -> None:
    if kind == 0:
        assert isinstance(item, np.ndarray) and item.shape == (size,) and (item == i).all()
    elif kind == 1:
        assert isinstance(item, dict)
        assert (item["x"] == i).all() and int(item["label"]) == i and (item["small"] == i).all()
    else:
        assert isinstance(item, tuple) and (item[0] == i).all() and item[1] == i and (item[2] == i).all()


def _plan(seed: int, count: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    sizes = [100, 2**14, 2**16 + 3, 2**18, 2**20 // 4 * 3]
    return [(i, sizes[int(rng.integers(len(sizes)))], int(rng.integers(3))) for i in range(count)]


def _made(entry: tuple[int, int, int]) -> object:
    return _item(*entry)


@needs_maps
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_held_arrays_stay_intact_while_later_items_flow(start_method, transport, monkeypatch):
    monkeypatch.setenv("PESCADOR_FP_TRANSPORT", transport)
    plan = _plan(seed=len(start_method) + len(transport), count=150)
    rng = np.random.default_rng(7)
    s = pf.from_iterable(plan) | pf.map(_made) | pf.background(workers=2, start_method=start_method)
    held: dict[int, object] = {}
    shared = 0
    for entry, item in zip(plan, s):
        _check(item, *entry)
        leaf = item if isinstance(item, np.ndarray) else item["x"] if isinstance(item, dict) else item[0]
        shared += in_shared_memory(leaf)
        if rng.random() < 0.4:
            held[entry[0]] = item
        if held and rng.random() < 0.3:  # drop a random one of those held: blocks return out of order
            del held[list(held)[int(rng.integers(len(held)))]]
        for i in list(held)[-5:]:
            _check(held[i], *plan[i])
    for i, item in held.items():
        _check(item, *plan[i])
    assert shared > 40  # the large arrays were handed over in shared memory


@needs_maps
def test_arrays_are_writable_blocks_and_writing_one_touches_no_other():
    s = (
        pf.from_iterable(range(60))
        | pf.map(lambda i: np.full(BLOCK_MIN // 8 + i, i))
        | pf.background(workers=2)
    )
    held = list(s)
    assert all(in_shared_memory(x) and x.flags.writeable for x in held)
    held[10][:] = -1
    held[11] += 100
    for i, x in enumerate(held):
        want = -1 if i == 10 else i + 100 if i == 11 else i
        assert x.shape == (BLOCK_MIN // 8 + i,) and (x == want).all()


@needs_maps
def test_small_arrays_are_copied_out_of_the_ring_and_large_ones_are_not():
    small, large = np.zeros(BLOCK_MIN // 8 - 1), np.zeros(BLOCK_MIN // 8)
    out = list(pf.from_iterable([small, large, small]) | pf.background())
    assert [in_shared_memory(x) for x in out] == [False, True, False]


@needs_maps
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_copy_true_gives_private_arrays(transport, monkeypatch):
    monkeypatch.setenv("PESCADOR_FP_TRANSPORT", transport)
    items = [np.full(2**18, i) for i in range(20)]
    copied = list(pf.from_iterable(items) | pf.background(workers=2, copy=True))
    assert not any(in_shared_memory(x) for x in copied)
    assert all(x.flags.writeable for x in copied)
    owned = list(pf.from_iterable(items) | pf.background(workers=2))
    assert all(in_shared_memory(x) for x in owned)
    assert all((a == b).all() for a, b in zip(copied, owned))


@pytest.mark.parametrize("transport", TRANSPORTS)
@needs_maps
def test_arrays_outlive_close_and_the_workers(transport, monkeypatch):
    monkeypatch.setenv("PESCADOR_FP_TRANSPORT", transport)
    s = pf.from_iterable(range(30)) | pf.map(lambda i: {"x": np.full(2**17, i), "pid": os.getpid()})
    it = iter(s | pf.background(workers=2))
    kept = [next(it) for _ in range(10)]
    pids = {item["pid"] for item in kept}
    it.close()
    del it
    gc.collect()
    for pid in pids:  # the workers are gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for i, item in enumerate(kept):
        assert (item["x"] == i).all() and in_shared_memory(item["x"])
        item["x"][:] = -i
    assert all((item["x"] == -i).all() for i, item in enumerate(kept))


def _slow_after(i):
    if i >= 4:
        time.sleep(0.05)
    return np.full(2**18, i), os.getpid()


@needs_maps
def test_a_worker_killed_after_delivering_leaves_delivered_arrays_readable():
    it = iter(pf.from_iterable(range(100)) | pf.map(_slow_after) | pf.background(workers=1))
    delivered = [next(it) for _ in range(4)]
    os.kill(delivered[0][1], signal.SIGKILL)
    with pytest.raises(pf.WorkerError):
        for _ in it:
            pass
    for i, (x, _) in enumerate(delivered):
        assert (x == i).all() and in_shared_memory(x)
    delivered[0][0][:] = 5  # still writable, still ours
    assert (delivered[0][0] == 5).all()


@needs_maps
def test_torch_tensors_share_the_blocks_and_keep_them():
    torch = pytest.importorskip("torch")
    import pescador_fp.torch as pft

    s = pf.from_iterable(range(200)) | pf.map(lambda i: np.full(2**17, i, np.float32)) | pf.background()
    tensors = iter(s | pft.tensors())
    first = next(tensors)
    kept = first[10:20]  # a view of a tensor over a block: only it is left
    assert in_shared_memory(kept.numpy())
    del first
    gc.collect()
    for i, t in enumerate(tensors, 1):
        assert float(t[0]) == i  # later items reuse the blocks of the dropped ones, never kept's
    assert isinstance(kept, torch.Tensor) and (kept == 0).all()


def test_block_sizes_pin_at_most_a_quarter_more():
    for n in [BLOCK_MIN + 1, 200_000, 2**20, 2**20 + 1, 3 * 2**20 - 1, 9 * 2**20 + 7]:
        assert n <= size_class(n) <= 1.25 * n
        assert size_class(n) % 4096 == 0


# ---------------------------------------------------------------- shared memory counted


_MEMORY_SCRIPT = """
import gc, json, shutil, time, numpy as np, pescador_fp as pf

def used():
    return shutil.disk_usage("/dev/shm").used

MiB = 2**20
s = pf.from_iterable(range(100000)) | pf.map(lambda i: np.full(MiB // 8, i))
s = s | pf.background(workers=1, ring_bytes=MiB)
it = iter(s)
for _ in range(20):
    next(it)
base = used()
held = [next(it) for _ in range(40)]
holding = used()
del held
gc.collect()
flat = []
t0 = time.monotonic()
count = 0
while count < 3000 or time.monotonic() - t0 < 4.0:  # dropped at once: the blocks are reused
    x = next(it)
    assert (x == x[0]).all()
    del x
    count += 1
    if count % 500 == 0:
        flat.append(used())
after = used()
it.close()
print(json.dumps({"base": base, "holding": holding, "flat": flat, "after": after, "count": count}))
"""


@needs_private_shm
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_memory_in_use_follows_what_is_held(transport):
    got = run_with_own_shm(_MEMORY_SCRIPT, "256m", transport)
    mib = 2**20
    held = 40 * mib
    # Held arrays are in shared memory (at most 1.25x their bytes each, plus the pool's own).
    assert held <= got["holding"] - got["base"] + 4 * mib
    assert got["holding"] <= got["base"] + 1.25 * 1.25 * held + 4 * mib
    # Dropping every item keeps memory flat over thousands of 1 MiB items: the blocks are reused.
    assert got["count"] >= 3000 and max(got["flat"]) <= got["holding"] + mib, got
    assert max(got["flat"][-3:]) - min(got["flat"][-3:]) <= mib, got["flat"]
    # Blocks free for a while give their memory back: near what the pass used before holding.
    assert got["after"] <= got["base"] + 4 * mib, got


_SHORT_SCRIPT = """
import json, warnings, numpy as np, pescador_fp as pf

MiB = 2**20
s = pf.from_iterable(range(40)) | pf.map(lambda i: {"x": np.full(MiB // 8, i), "i": i})
s = s | pf.background(workers=2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    held = list(s)  # 40 MiB held, in a 16 MiB /dev/shm
ok = all((item["x"] == i).all() and item["i"] == i for i, item in enumerate(held))
print(json.dumps({"ok": ok, "count": len(held), "warnings": [str(w.message) for w in caught]}))
"""


@needs_private_shm
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_short_shared_memory_falls_back_to_copies_with_one_warning(transport):
    got = run_with_own_shm(_SHORT_SCRIPT, "16m", transport)
    assert got["ok"] and got["count"] == 40
    assert len(got["warnings"]) == 1, got["warnings"]
    assert "shared memory is short" in got["warnings"][0] and "--shm-size" in got["warnings"][0]


_KILLED_CONSUMER_SCRIPT = """
import json, os, signal, subprocess, sys, time

child = subprocess.Popen([sys.executable, "-c", '''
import os, signal, numpy as np, pescador_fp as pf
s = pf.from_iterable(range(1000)) | pf.map(lambda i: np.full(2**17, i)) | pf.background(workers=2)
held = []
for x in s:
    held.append(x)
    if len(held) == 50:
        spans = [line.split()[0].split("-") for line in open("/proc/self/maps") if "/dev/shm/" in line]
        at = x.__array_interface__["data"][0]
        if not any(int(start, 16) <= at < int(end, 16) for start, end in spans):
            raise SystemExit(3)  # what it holds is not in shared memory
        os.kill(os.getpid(), signal.SIGKILL)
'''])
child.wait()
left = None
for _ in range(200):  # the workers notice their parent is gone, and exit
    left = os.listdir("/dev/shm")
    if not left and os.statvfs("/dev/shm").f_bfree == os.statvfs("/dev/shm").f_blocks:
        break
    time.sleep(0.05)
st = os.statvfs("/dev/shm")
print(json.dumps({"code": child.returncode, "left": left, "used": (st.f_blocks - st.f_bfree) * st.f_frsize}))
"""


@needs_private_shm
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_consumer_killed_while_holding_leaves_nothing_in_dev_shm(transport):
    got = run_with_own_shm(_KILLED_CONSUMER_SCRIPT, "256m", transport)
    assert got["code"] == -signal.SIGKILL
    assert [name for name in got["left"] if not name.startswith("sem.")] == []
    if transport == "linux":
        assert got["left"] == [] and got["used"] == 0


KEPT: list[object] = []


def _drop_what_the_fork_inherited(i: int) -> int:
    KEPT.clear()  # in a forked worker: its copies of the consumer's arrays go
    gc.collect()
    return i


def _slowly(i: int) -> np.ndarray:
    time.sleep(0.002)
    return np.full(2**15, i)


def test_a_forked_worker_dropping_inherited_arrays_returns_no_block():
    # The first pass's worker keeps taking blocks (a large budget in flight) while the second runs.
    first = iter(pf.from_iterable(range(3000)) | pf.map(_slowly) | pf.background(workers=1, ring_bytes=2**28))
    KEPT.extend(next(first) for _ in range(20))
    try:
        # Another pass, forked while the consumer holds the first one's arrays.
        second = pf.from_iterable(range(4)) | pf.map(_drop_what_the_fork_inherited)
        assert list(second | pf.background(workers=2, start_method="fork")) == [0, 1, 2, 3]
        for _ in range(400):  # the first pass's worker writes on: never into a block still held
            next(first)
        assert all((x == i).all() for i, x in enumerate(KEPT))
    finally:
        KEPT.clear()
        first.close()


def _sized(i: int) -> np.ndarray:
    return np.full(2**15 * (1 + i % 40), i, np.int32)  # 40 size classes from 128 KiB to 5 MiB


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_held_arrays_keep_no_descriptor_open_per_segment():
    # Each class's first blocks get a segment each: a descriptor kept per mapped segment would
    # be one per held array here, and a consumer keeping arrays would meet `ulimit -n` (EMFILE).
    before = len(os.listdir("/proc/self/fd"))
    stream = pf.from_iterable(range(200)) | pf.map(_sized) | pf.background(workers=2, start_method="fork")
    held = list(stream)
    opened = len(os.listdir("/proc/self/fd")) - before
    assert sorted(int(x[0]) for x in held) == list(range(200))
    assert opened <= 8, f"{opened} descriptors open while 200 arrays are held"
    assert all((x == x[0]).all() for x in held)
    del held
    gc.collect()


_FILES_SCRIPT = """
import json, resource, warnings, numpy as np, pescador_fp as pf

resource.setrlimit(resource.RLIMIT_NOFILE, (120, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
s = pf.from_iterable(range(400)) | pf.map(lambda i: np.full(2**15 * (1 + i % 40), i, np.int32))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    held = list(s | pf.background(workers=1, start_method="fork"))
ok = sorted(int(x[0]) for x in held) == list(range(400)) and all((x == x[0]).all() for x in held)
print(json.dumps({"ok": ok, "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descriptor limits as on Linux")
def test_a_worker_out_of_descriptors_falls_back_and_says_so():
    # A worker keeps descriptors for its segments: out of them (EMFILE), it copies through the ring,
    # and the warning names the descriptor limit, not /dev/shm (whose advice would not help).
    done = subprocess.run(
        [sys.executable, "-c", _FILES_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["ok"]
    assert len(got["warnings"]) == 1, got["warnings"]
    assert "ulimit -n" in got["warnings"][0] and "--shm-size" not in got["warnings"][0], got["warnings"]
