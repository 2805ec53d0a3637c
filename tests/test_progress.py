"""progress: a tqdm display that leaves the items alone, sized from the stream, closed on every way out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import need

import pescador_fp as pf

need("tqdm")
tqdm_auto = pytest.importorskip("tqdm.auto")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_items_pass_unchanged_and_the_bar_counts_them(capsys):
    s = pf.from_iterable(range(7)) | pf.map(lambda x: x * 2) | pf.progress(desc="train")
    assert list(s) == [0, 2, 4, 6, 8, 10, 12]
    err = capsys.readouterr().err
    assert "train" in err and "7/7" in err  # the total comes from the stream's length


def test_an_explicit_total_and_an_unknown_length(capsys):
    list(pf.stream(iter, "abc") | pf.progress(total=10))
    assert "3/10" in capsys.readouterr().err
    list(pf.stream(iter, "abcd") | pf.progress())
    err = capsys.readouterr().err
    assert "4item [" in err and "4/" not in err  # counted with no end


def test_the_bar_and_the_upstream_close_when_the_pass_stops_early(capsys):
    from helpers import Recorder

    rec = Recorder(None)
    assert (rec.stream() | pf.progress()).head(3) == [0, 1, 2]
    assert rec.closed == 1
    assert len(tqdm_auto.tqdm._instances) == 0


def test_progress_after_background_counts_what_the_consumer_receives(capsys):
    s = pf.from_iterable(range(20)) | pf.map(lambda x: x + 1) | pf.background(workers=2) | pf.progress()
    assert list(s) == list(range(1, 21))
    assert "20item [" in capsys.readouterr().err


def test_arguments_are_checked_when_built():
    with pytest.raises(ValueError, match=r"progress: total must be an integer >= 0, got -1"):
        pf.progress(total=-1)
    with pytest.raises(TypeError, match=r"progress: desc must be a string or None, got 3 \(int\)"):
        pf.progress(desc=3)
    assert (
        repr(pf.progress(10, "x")) == "progress(total=10, desc='x')" and repr(pf.progress()) == "progress()"
    )


def test_without_tqdm_building_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"pescador_fp\[progress\]"):
        pf.progress()


# A notebook's kernel as tqdm.auto recognises it (the module of ipykernel's shell is loaded); the
# display is then made for real, by tqdm.
_KERNEL = """
import sys, types, warnings
import IPython
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
{setup}
warnings.simplefilter("error")
import pescador_fp as pf
from pescador_fp.ops.progress import _bar_class
{run}
print(" ".join(cls.__module__ for cls in _bar_class().__mro__))  # the bar's class and its bases
"""


def _in_kernel(setup: str, run: str) -> subprocess.CompletedProcess[str]:
    code = _KERNEL.format(setup=setup, run=run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_a_notebook_without_ipywidgets_gets_the_text_bar_without_tqdm_s_warning():
    need("IPython")
    # tqdm.auto warned "IProgress not found" and drew text: the progress extra alone brought no widget.
    run = "assert list(pf.from_iterable(range(5)) | pf.progress()) == list(range(5))"
    result = _in_kernel('sys.modules["ipywidgets"] = None  # not installed', run)
    assert result.returncode == 0, result.stderr
    assert "tqdm.notebook" not in result.stdout.split()
    assert "5/5" in result.stderr and "IProgress" not in result.stderr


def test_a_notebook_with_ipywidgets_gets_the_widget():
    need("IPython", "ipywidgets")
    result = _in_kernel("", "")
    assert result.returncode == 0, result.stderr
    assert "tqdm.notebook" in result.stdout.split()


def test_the_progress_extra_brings_what_the_notebook_widget_needs():
    # The docs say `pip install "pescador_fp[progress]"` brings tqdm and ipywidgets; the extra had tqdm only.
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as file:
        extra = tomllib.load(file)["project"]["optional-dependencies"]["progress"]
    assert {requirement.split(">")[0].split("=")[0] for requirement in extra} == {"tqdm", "ipywidgets"}
