"""The error hierarchy."""

from __future__ import annotations

import os
import pickle
import sys
import traceback

import pytest

import pescador_fp as pf


@pytest.mark.parametrize("error", [pf.DataError, pf.WorkerError])
def test_errors_derive_from_pescador_error(error):
    assert issubclass(error, pf.PescadorError) and issubclass(pf.PescadorError, Exception)
    assert str(pickle.loads(pickle.dumps(error("worker 1 died")))) == "worker 1 died"


# ---------------------------------------------------------------- what the user's traceback shows


def _fails_at_3(x):
    if x == 3:
        raise ValueError("bad item 3")
    return x


def _library_frames(error):
    package = os.path.dirname(os.path.abspath(pf.__file__))
    frames = [
        (frame, line)
        for frame, line in traceback.walk_tb(error.__traceback__)
        if frame.f_code.co_filename.startswith(package)
    ]
    if sys.version_info < (3, 11):
        # Python 3.10 re-raises the traceback it caught, whose head is the frame that caught the error:
        # that one frame stays, marked __tracebackhide__ (IPython and pytest hide it).
        hidden = [(frame, line) for frame, line in frames if frame.f_locals.get("__tracebackhide__")]
        assert len(hidden) <= 1 and frames[:1] == hidden, frames
        frames = frames[1:]
    return [f"{frame.f_code.co_filename}:{line} in {frame.f_code.co_name}" for frame, line in frames]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_in_a_pass_shows_the_user_s_frames_not_the_library_s(workers, monkeypatch):
    # A worker's error came with 7 frames of the pass, the merge and the channel before the user's.
    monkeypatch.delenv("PESCADOR_FP_FULL_TRACEBACK", raising=False)
    s = pf.from_iterable(range(8)) | pf.map(_fails_at_3)
    if workers:
        s = s | pf.background(workers=workers)
    with pytest.raises(ValueError, match="bad item 3") as caught:
        for _ in s:
            pass
    assert _library_frames(caught.value) == []
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[0].name == "test_an_error_in_a_pass_shows_the_user_s_frames_not_the_library_s"
    if not workers:  # the user's function, where it raised
        assert frames[-1].name == "_fails_at_3"
    with pytest.raises(ValueError, match="bad item 3") as caught:
        s.head(8)
    assert _library_frames(caught.value) == []


def test_the_full_traceback_is_one_variable_away(monkeypatch):
    monkeypatch.setenv("PESCADOR_FP_FULL_TRACEBACK", "1")
    s = pf.from_iterable(range(8)) | pf.map(_fails_at_3) | pf.background(workers=2)
    with pytest.raises(ValueError, match="bad item 3") as caught:
        list(s)
    assert len(_library_frames(caught.value)) >= 3
