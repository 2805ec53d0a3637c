"""map, filter, mapcat."""

from __future__ import annotations

import pytest

import pescador_fp as pf


def test_map_filter_mapcat_compose():
    s = range(6) | pf.map(lambda x: x * 3) | pf.filter(lambda x: x % 2 == 0) | pf.mapcat(lambda x: [x, -x])
    assert list(s) == [0, 0, 6, -6, 12, -12]


def test_mapcat_skips_empty_results():
    assert list(range(4) | pf.mapcat(range)) == [0, 0, 1, 0, 1, 2]


def test_exceptions_in_user_functions_propagate_unchanged():
    s = range(3) | pf.map(lambda x: 1 // (x - 1))
    with pytest.raises(ZeroDivisionError):
        list(s)


@pytest.mark.parametrize("make", [pf.map, pf.filter, pf.mapcat])
def test_non_callables_are_refused_at_build_time(make):
    with pytest.raises(TypeError, match=r"must be callable, got 3 \(int\)"):
        make(3)
