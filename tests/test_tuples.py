"""tuples and keras_tuples."""

from __future__ import annotations

import pytest

import pescador_fp as pf

SAMPLES = [{"a": i, "b": -i, "c": 2 * i} for i in range(3)]


def test_tuples_orders_values_by_keys():
    assert list(SAMPLES | pf.tuples("c", "a")) == [(0, 0), (2, 1), (4, 2)]
    assert list(SAMPLES | pf.tuples("b")) == [(0,), (-1,), (-2,)]


def test_keras_tuples_follows_pescador():
    assert list(SAMPLES[1:2] | pf.keras_tuples("a", "b")) == [(1, -1)]
    assert list(SAMPLES[1:2] | pf.keras_tuples(["a", "c"], ["b"])) == [([1, 2], [-1])]
    assert list(SAMPLES[1:2] | pf.keras_tuples(inputs="a")) == [(1, None)]
    assert list(SAMPLES[1:2] | pf.keras_tuples(outputs=["b", "c"])) == [(None, [-1, 2])]


def test_missing_keys_raise_key_error_and_non_dicts_data_error():
    with pytest.raises(KeyError):
        list(SAMPLES | pf.tuples("zzz"))
    with pytest.raises(pf.DataError, match="dict samples"):
        list([1, 2] | pf.tuples("a"))
    with pytest.raises(pf.DataError):
        list([1, 2] | pf.keras_tuples("a"))


def test_bad_arguments_are_refused_at_build_time():
    with pytest.raises(ValueError, match="at least one key"):
        pf.tuples()
    with pytest.raises(ValueError, match="inputs=None, outputs=None"):
        pf.keras_tuples()
    with pytest.raises(TypeError, match="inputs"):
        pf.keras_tuples(inputs=3)
