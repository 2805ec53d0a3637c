"""Worker processes: the right start method per system, a parent's death seen under every start method,
workers that die with their consumer even inside slow user code, and a fork server that preloads.

Real processes throughout; a test looks only at processes it started.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import pescador_fp as pf
from pescador_fp._ipc.workers import (
    PRELOAD_VARIABLE,
    START_METHOD_VARIABLE,
    _default_for,
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
