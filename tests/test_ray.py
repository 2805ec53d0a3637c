"""pescador_fp.ray: build-time checks here; the cases that need a Ray cluster are in tests/ray_cases.py,
run here in a pytest process of their own.

Ray starts threads of its own in the process that joins a cluster (``ray.init``), and
those threads stay; a fork after that (a background worker with ``start_method="fork"``)
is unsafe and, from Python 3.12, warns, which ``filterwarnings = error`` turns into
failures of tests that have nothing to do with Ray. So the main test process never
imports Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from helpers import need, pytest_in_child

import pescador_fp as pf
import pescador_fp.ray as pfr


def test_importing_pescador_fp_ray_does_not_import_ray():
    code = "import sys, pescador_fp, pescador_fp.ray as r; r.remote(2); print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_without_ray_iterating_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    stream = pf.from_iterable(range(4)) | pfr.remote(workers=2)
    with pytest.raises(ImportError, match=r"needs Ray: pip install 'pescador_fp\[ray\]'"):
        list(stream)


def test_remote_repr_shows_its_options():
    s = pf.from_iterable(range(3)) | pfr.remote(workers=2, prefetch=8, resources={"CPU": 2, "GPU": 0.5})
    options = "workers=2, prefetch=8, resources={'CPU': 2.0, 'GPU': 0.5}"
    assert repr(s) == f"from_iterable(range(0, 3)) | ray.remote({options})"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be an integer >= 1, got 0"),
        ({"workers": 2.0}, TypeError, r"workers must be an integer >= 1, got 2\.0 \(float\)"),
        ({"workers": 2, "prefetch": 1.5}, TypeError, r"prefetch must be an integer >= 1, got 1\.5"),
        ({"workers": 2, "prefetch": 0}, ValueError, "prefetch must be an integer >= 1, got 0"),
        ({"workers": 2, "max_retries": -1}, ValueError, "max_retries must be an integer >= 0, got -1"),
        ({"workers": 2, "resources": 4}, TypeError, "resources must be a dict .* got 4"),
        ({"workers": 2, "resources": {"CPU": -1}}, ValueError, r"resources\['CPU'\] .* got -1"),
        ({"workers": 2, "resources": {1: 1}}, TypeError, "resources keys must be resource names"),
        (
            {"workers": 2, "resources": {"CPU": 1e-9}},
            ValueError,
            r"resources\['CPU'\] must be 0 or .* got 1e-09",
        ),
        ({"workers": 2, "prefetch": 10**30}, ValueError, "prefetch must be an integer <= 2147483647, got 10"),
    ],
)
def test_bad_arguments_are_refused_when_the_operator_is_built(kwargs, error, message):
    with pytest.raises(error, match=f"pescador_fp.ray.remote: {message}"):
        pfr.remote(**kwargs)


@pytest.mark.parametrize("inner", [pf.background(workers=2), pfr.remote(workers=2)])
def test_workers_inside_a_remote_pipeline_are_refused(inner):
    with pytest.raises(ValueError, match=r"already holds (background|ray\.remote)\(workers=2\)"):
        pf.from_iterable(range(4)) | inner | pf.map(abs) | pfr.remote(workers=2)


def test_a_remote_inside_a_background_pipeline_is_refused():
    with pytest.raises(ValueError, match=r"background: the pipeline already holds ray\.remote\(workers=2\)"):
        pf.from_iterable(range(4)) | pfr.remote(workers=2) | pf.map(abs) | pf.background(workers=2)
    assert "ray" not in sys.modules


def test_a_pipeline_that_cannot_be_pickled_names_the_piece():
    lock = threading.Lock()
    stream = pf.from_iterable(range(4)) | pf.map(lambda x: (lock, x)) | pf.batch(2) | pfr.remote(workers=2)
    with pytest.raises(TypeError, match=r"cannot send the pipeline to Ray tasks: map\(<lambda>\) could not"):
        list(stream)
    assert "ray" not in sys.modules  # refused before Ray is imported


@pytest.mark.timeout(600)
def test_ray_cases_pass_in_a_process_of_their_own():
    need("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PESCADOR_FP_RAY_CHILD"] = "1"  # conftest.py collects ray_cases.py only then
    pytest_in_child(["tests/ray_cases.py"], env, timeout=540)
