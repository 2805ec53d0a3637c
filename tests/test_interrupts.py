"""Ctrl-C and background: an interrupt at any moment (while workers start, while they are stopped and
their shared memory freed, twice in a row) leaves nothing behind and is never lost.

Each case runs in a Python process of its own, which sends SIGINT to itself from a timer thread while
its main thread iterates, as a notebook's Stop button or a terminal's Ctrl-C does; the process then
reports what is left of its own: descriptors, child processes, shared-memory names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

START_METHODS = ["fork", "forkserver", "spawn"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What both scripts share: the pipelines (divided among the workers, or fed by a feeder), a timer
# that interrupts this process, and what this process holds of its own.
COMMON = """
import multiprocessing, os, random, signal, sys, threading, time
import numpy as np
import pescador_fp as pf
from pescador_fp._ipc.ring import NAME_PREFIX, SHM_DIR

# Ctrl-C raises KeyboardInterrupt, as in a terminal or a notebook, however the tests were started (a shell
# starts a background job with SIGINT ignored, and its processes would never see these interrupts).
signal.signal(signal.SIGINT, signal.default_int_handler)

def endless():
    i = 0
    while True:
        yield i
        i += 1

def pipelines(method):
    return {
        "divided": pf.from_iterable(range(10**9)) | pf.map(lambda i: np.full(256, i))
        | pf.background(workers=2, start_method=method),
        "fed": pf.stream(endless) | pf.map(lambda i: np.full(256, i))
        | pf.background(workers=2, start_method=method),
    }

def interrupt(delays, group):
    # group: to the whole process group, workers included, as a terminal's Ctrl-C; else to this
    # process alone, as a notebook's Stop button
    for delay in delays:
        time.sleep(delay)
        if group:
            os.killpg(os.getpgid(0), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGINT)

def timer(delays, group):
    thread = threading.Thread(target=interrupt, args=(delays, group))
    thread.start()
    return thread

def children():
    found = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                found.update(f.read().split())
        except OSError:  # a kernel without the list: multiprocessing's own
            return {str(p.pid) for p in multiprocessing.active_children()}
    return found

def held():
    shm = [f for f in os.listdir(SHM_DIR) if f.startswith(f"{NAME_PREFIX}{os.getpid()}_")]
    return len(os.listdir("/proc/self/fd")), children(), shm

def settled(baseline, deadline_s=10.0):
    end = time.monotonic() + deadline_s
    while held() != baseline and time.monotonic() < end:
        time.sleep(0.05)
    return held()
"""

# Passes interrupted twice, up to 0.3 s apart, at random moments, in a loop that catches KeyboardInterrupt
# and opens the pass again (a notebook cell run again): the second interrupt lands in the first
# pass's cleanup or in the next pass's start.
TWICE = """
method, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
streams = pipelines(method)
for s in streams.values():  # the fork server and the resource tracker start once, and stay
    s.head(3)
baseline = settled(held(), 0.5)
caught = 0
for r in range(rounds):
    s = streams[rng.choice(sorted(streams))]
    step = rng.choice([0.0, 0.001, 0.01])
    first = rng.uniform(0.0, 0.6 if method == "spawn" else 0.3)
    thread = timer([first, rng.choice([0.3, rng.uniform(0.0, 0.3)])], rng.random() < 0.5)
    while True:
        try:
            while thread.is_alive():
                try:
                    for _ in s:
                        time.sleep(step)  # the training step: where most interrupts land
                except KeyboardInterrupt:
                    caught += 1
            break
        except KeyboardInterrupt:  # the second one, in the inner handler
            caught += 1
    thread.join()
fds, kids, shm = settled(baseline)
print(f"caught {caught} fds {fds - baseline[0]} children {sorted(kids - baseline[1])} shm {shm}")
"""

# One Ctrl-C while a pass starts its workers: the loop always sees it, as a KeyboardInterrupt.
ONCE = """
method, tries, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
streams = pipelines(method)
start_s = {}
for name, s in streams.items():
    began = time.perf_counter()
    s.head(1)
    start_s[name] = time.perf_counter() - began
baseline = settled(held(), 0.5)
outcomes = {}
for t in range(tries):
    name = rng.choice(sorted(streams))
    delays = [rng.uniform(0.0, start_s[name])]
    thread = threading.Thread(target=interrupt, args=(delays, rng.random() < 0.5))
    outcome, it = "lost", None
    try:
        try:
            thread.start()
            it = iter(streams[name])
            next(it)
            thread.join()
            time.sleep(0.2)  # a signal that was caught and dropped does not come back
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        except pf.WorkerError as error:
            outcome = f"WorkerError: {error}"
        finally:
            if it is not None:
                it.close()
    except KeyboardInterrupt:  # it landed in the inner handler
        outcome = "KeyboardInterrupt"
    thread.join()
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
fds, kids, shm = settled(baseline)
print(f"outcomes {outcomes} fds {fds - baseline[0]} children {sorted(kids - baseline[1])} shm {shm}")
"""


def run(script: str, *args: object, timeout: float) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PESCADOR_FP_START_METHOD"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COMMON + script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        start_new_session=True,  # its signals stay in its own process group
        cwd=ROOT,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_interrupts_at_random_moments_twice_leave_nothing_behind(start_method):
    rounds = {"fork": 10, "forkserver": 8, "spawn": 5}[start_method]
    result = run(TWICE, start_method, rounds, 20, timeout=200)
    assert result.returncode == 0, result.stderr[-5000:]
    words = result.stdout.split()
    assert words[0] == "caught" and int(words[1]) >= rounds, result.stdout
    assert result.stdout.split(" fds ")[1].strip() == "0 children [] shm []", result.stdout + result.stderr
    # Only KeyboardInterrupts: a second one during the cleanup of a pass that the garbage collector
    # closes is printed by Python ("Exception ignored in"), after the cleanup, while the first one
    # is on its way; no other error.
    assert "Error" not in result.stderr, result.stderr[-5000:]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_ctrl_c_while_workers_start_is_never_lost_nor_a_worker_error(start_method):
    tries = {"fork": 25, "forkserver": 15, "spawn": 5}[start_method]
    result = run(ONCE, start_method, tries, 21, timeout=200)
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.startswith(f"outcomes {{'KeyboardInterrupt': {tries}}} fds 0 children [] shm []"), (
        result.stdout + result.stderr[-5000:]
    )
    # no worker prints a KeyboardInterrupt of its own, nor multiprocessing its after-fork hooks'
    for printed in ("Traceback", "Exception ignored"):
        assert printed not in result.stderr, result.stderr[-5000:]
