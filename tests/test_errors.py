"""The error hierarchy."""

from __future__ import annotations

import pickle

import pytest

import pescador_fp as pf


@pytest.mark.parametrize("error", [pf.DataError, pf.WorkerError])
def test_errors_derive_from_pescador_error(error):
    assert issubclass(error, pf.PescadorError) and issubclass(pf.PescadorError, Exception)
    assert str(pickle.loads(pickle.dumps(error("worker 1 died")))) == "worker 1 died"
