"""Worker processes: the right start method per system, a parent's death seen under every start method,
workers that die with their consumer even inside slow user code, and a fork server that preloads.

Real processes throughout; a test looks only at processes it started.
"""

from __future__ import annotations

import ctypes
import importlib.util
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pescador_fp as pf
from pescador_fp._ipc.workers import (
    PRELOAD_VARIABLE,
    START_METHOD_VARIABLE,
    _blas_counters,
    _default_for,
    _local_counters,
    _openblas_paths,
    default_start_method,
    parent_alive,
)

START_METHODS = multiprocessing.get_all_start_methods()
# A worker must be gone this soon after its consumer dies.
GONE_DEADLINE_S = 3.0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    return condition()


@pytest.fixture(autouse=True)
def no_children_left():
    yield
    assert wait_until(lambda: not multiprocessing.active_children(), 3.0)


# ------------------------------------------------------------------ start methods


@pytest.mark.parametrize(
    ("platform", "methods", "threads", "expected"),
    [
        ("linux", ["fork", "spawn", "forkserver"], 1, "fork"),
        ("linux", ["fork", "spawn", "forkserver"], 3, "forkserver"),
        ("darwin", ["spawn", "fork", "forkserver"], 1, "spawn"),
        ("win32", ["spawn"], 1, "spawn"),
        ("win32", ["spawn"], 4, "spawn"),
    ],
)
def test_the_default_start_method_suits_each_system(platform, methods, threads, expected):
    assert _default_for(platform, methods, threads) == expected


@pytest.mark.parametrize(
    ("platform", "methods", "expected"),
    [("linux", ["fork", "spawn", "forkserver"], "forkserver"), ("darwin", ["spawn", "fork"], "spawn")],
)
def test_a_process_with_a_tensor_runtime_never_forks_by_default(platform, methods, expected):
    assert _default_for(platform, methods, 1, runtime=True) == expected


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="libraries are found through /proc")
def test_numpy_s_openblas_pool_is_seen_whether_or_not_its_library_exports_its_counters():
    # numpy 2.5's OpenBLAS no longer exports blas_server_avail: every numpy process on a multi-core
    # machine then counted the pool's idle threads as threads that may hold a lock, and never forked.
    libraries = _openblas_paths()
    if not libraries:
        pytest.skip("this numpy has no OpenBLAS of its own")
    assert len(_blas_counters()) == len(libraries)
    for path in libraries:
        library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        available, size = _local_counters(path, library)  # read from the ELF symbol table
        assert available.value in (0, 1) and size.value >= 1
        try:
            exported = ctypes.c_int.in_dll(library, "blas_server_avail")
        except ValueError:
            continue
        assert ctypes.addressof(available) == ctypes.addressof(exported)
        assert ctypes.addressof(size) == ctypes.addressof(ctypes.c_int.in_dll(library, "blas_num_threads"))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="libraries are found through /proc")
@pytest.mark.parametrize("field", [0x28, "strings"])  # the section headers' offset; a symbol names' offset
def test_a_library_file_with_offsets_out_of_range_is_read_as_none(tmp_path, field):
    libraries = _openblas_paths()
    if not libraries:
        pytest.skip("this numpy has no OpenBLAS of its own")
    data = bytearray(Path(libraries[0]).read_bytes())
    if field == "strings":  # the section names' table: its sh_offset
        section_offset = struct.unpack_from("<Q", data, 0x28)[0]
        entry_size, _, names_index = struct.unpack_from("<HHH", data, 0x3A)
        field = section_offset + names_index * entry_size + 24
    struct.pack_into("<Q", data, field, 2**64 - 1)  # the loader never reads it: such a library loads
    broken = tmp_path / "libopenblas_broken.so"
    broken.write_bytes(data)
    library = ctypes.CDLL(libraries[0], mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    assert _local_counters(str(broken), library) is None


NATIVE_THREAD = """
    import ctypes, os, threading
    import pescador_fp as pf
    from pescador_fp._ipc.workers import default_start_method

    def parents():
        s = pf.from_iterable([0, 1]) | pf.map(lambda _: os.getppid()) | pf.background(workers=2)
        return "forked" if set(s) == {os.getpid()} else "not forked"

    if __name__ == "__main__":
        print(default_start_method(), parents())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.pthread_create.argtypes = [ctypes.c_void_p] * 4
        thread = ctypes.c_ulong()
        # A thread made in C, running libc's sleep(1000): threading never hears of it.
        sleep = ctypes.cast(libc.sleep, ctypes.c_void_p)
        assert libc.pthread_create(ctypes.byref(thread), None, sleep, ctypes.c_void_p(1000)) == 0
        assert threading.active_count() == 1
        print(default_start_method(), parents())
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="threads are counted through /proc")
def test_a_native_thread_beside_no_python_thread_means_no_fork():
    # Before it, the process forks (numpy's idle BLAS pool does not count); with it, forkserver.
    result = run_script(NATIVE_THREAD, env={START_METHOD_VARIABLE: ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["fork forked", "forkserver not forked"], result.stderr


TORCH_EPOCHS = """
    import os
    import numpy as np
    import torch
    import pescador_fp as pf
    from pescador_fp._ipc.workers import default_start_method

    def augment(x):
        t = torch.from_numpy(x)
        return (t @ t).numpy()

    if __name__ == "__main__":
        torch.set_num_threads(2)
        s = (
            pf.from_iterable(range(8))
            | pf.map(lambda i: np.full((64, 64), float(i), dtype=np.float32))
            | pf.map(augment)
            | pf.background(workers=2, timeout=60)
        )
        for epoch in range(2):
            total = sum(float(x[0, 0]) for x in s.iterate(seed=epoch))
            w = torch.ones(256, 256, requires_grad=True)  # a training step: torch's threads start here
            (w @ w).sum().backward()
            print(epoch, total)
        print(default_start_method())
"""


@pytest.mark.timeout(300)
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_a_process_that_trains_with_torch_uses_the_fork_server_and_every_epoch_runs():
    # Under fork, a worker that uses torch after the parent's training step hung (an OpenMP pool
    # copied mid-use): epoch 1 never came.
    result = run_script(TORCH_EPOCHS, timeout=240, env={START_METHOD_VARIABLE: "", PRELOAD_VARIABLE: "torch"})
    assert result.returncode == 0, result.stderr[-5000:]
    want = sum(64 * float(i) ** 2 for i in range(8))
    assert result.stdout.split() == ["0", str(want), "1", str(want), "forkserver"], result.stderr[-5000:]


def test_the_start_method_variable_overrides_and_is_checked(monkeypatch):
    monkeypatch.setenv(START_METHOD_VARIABLE, "spawn")
    assert default_start_method() == "spawn"
    monkeypatch.setenv(START_METHOD_VARIABLE, "teleport")
    with pytest.raises(ValueError, match="PESCADOR_FP_START_METHOD='teleport'"):
        default_start_method()


# ------------------------------------------------------------------ the parent's death


def report_parent_alive(parent_pid: int, report) -> None:
    report.send(parent_alive(parent_pid)())


@pytest.mark.parametrize("method", START_METHODS)
def test_a_living_parent_is_seen_alive_under_each_start_method(method):
    # Under forkserver the OS parent is the server, not the consumer.
    context = multiprocessing.get_context(method)
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=report_parent_alive, args=(os.getpid(), writer), daemon=True)
    process.start()
    assert reader.poll(30) and reader.recv() is True
    process.join(5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_a_worker_waits_as_long_as_its_consumer_is_slow(method):
    # The worker fills its small ring and waits for space while the consumer sleeps: it must
    # not take the wait for its consumer's death (under forkserver it did, after one slice).
    s = pf.from_iterable(range(2000)) | pf.background(ring_bytes=4096, start_method=method)
    it = iter(s)
    first = next(it)
    time.sleep(0.5)
    assert [first, *it] == list(range(2000))


def run_script(
    body: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", START_METHODS)
def test_a_worker_in_slow_user_code_dies_with_its_consumer(method, tmp_path):
    pid_file = tmp_path / "worker"
    result = run_script(f"""
        import os, signal, threading, time
        import pescador_fp as pf

        def stuck(i):
            with open({str(pid_file)!r} + ".part", "w") as f:
                f.write(str(os.getpid()))
            os.rename({str(pid_file)!r} + ".part", {str(pid_file)!r})
            time.sleep(1e9)

        def kill_once_stuck():
            while not os.path.exists({str(pid_file)!r}):
                time.sleep(0.01)
            time.sleep(0.2)  # the worker is inside time.sleep now
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            threading.Thread(target=kill_once_stuck, daemon=True).start()
            next(iter(pf.from_iterable([1]) | pf.map(stuck) | pf.background(start_method={method!r})))
    """)
    assert result.returncode == -signal.SIGKILL, result.stderr
    worker = int(pid_file.read_text())
    assert wait_until(lambda: not alive(worker), GONE_DEADLINE_S), "the worker outlived its consumer"


# ------------------------------------------------------------------ the fork server


@pytest.mark.timeout(120)
@pytest.mark.skipif("forkserver" not in START_METHODS, reason="no forkserver here")
def test_the_fork_server_preloads_this_package_and_the_users_modules(tmp_path):
    # The fork server, started by this script, imports the package (numpy with it) and the
    # modules named in PESCADOR_FP_PRELOAD (importable there: installed, or on PYTHONPATH)
    # once; workers forked from it start with them.
    (tmp_path / "heavy_module.py").write_text(
        f"import os\nopen({str(tmp_path / 'imported_by')!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
    )
    result = run_script(
        """
        import os
        import pescador_fp as pf

        def report(_):
            with open(f"/proc/{os.getppid()}/maps") as maps:
                numpy_there = "numpy" in maps.read()
            return os.getppid(), numpy_there

        if __name__ == "__main__":
            s = pf.from_iterable([0]) | pf.map(report) | pf.background(start_method="forkserver")
            for server, numpy_there in s:
                print(server, numpy_there)
        """,
        env={PRELOAD_VARIABLE: "heavy_module", "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    server, numpy_there = result.stdout.split()
    assert numpy_there == "True"
    assert (tmp_path / "imported_by").read_text().split() == [server]
