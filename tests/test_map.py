"""map, filter, mapcat."""

from __future__ import annotations

import pytest

import pescador_fp as pf
from pescador_fp._stream import describe_callable


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


def _stops_at_3(x):
    if x == 3:
        raise StopIteration("from user code")
    return x


def _stops_at_3_rng(x, rng):
    return _stops_at_3(x)


STOPPING = {  # the operator, and the items it gives before the StopIteration
    "map": (pf.map(_stops_at_3), [0, 1, 2]),
    "filter": (pf.filter(_stops_at_3), [1, 2]),
    "mapcat": (pf.mapcat(lambda x: [_stops_at_3(x)]), [0, 1, 2]),
    "map_rng": (pf.map(_stops_at_3_rng, rng=True), [0, 1, 2]),
    "mapcat_rng": (pf.mapcat(lambda x, rng: [_stops_at_3(x)], rng=True), [0, 1, 2]),
}


@pytest.mark.parametrize(("op", "before"), STOPPING.values(), ids=STOPPING)
def test_stop_iteration_from_user_function_is_a_runtime_error_naming_operator_and_function(op, before):
    # Taken for the end of the input, it would silently drop items (builtins.map
    # even went on after it): Python's rule for generators (PEP 479) instead.
    it = iter(pf.from_iterable(range(8)) | op)
    assert [next(it) for _ in before] == before
    with pytest.raises(RuntimeError) as caught:
        next(it)
    fn = op.fn if hasattr(op, "fn") else op.pred
    assert str(caught.value).startswith(f"{op!r}: {describe_callable(fn)} raised StopIteration")
    assert isinstance(caught.value.__cause__, StopIteration)
    assert caught.value.__cause__.args == ("from user code",)


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_iteration_from_user_function_in_a_worker_reaches_the_consumer(workers):
    s = pf.from_iterable(range(8)) | pf.map(_stops_at_3) | pf.background(workers=workers)
    with pytest.raises(RuntimeError, match=r"map\(_stops_at_3\): _stops_at_3 raised StopIteration") as caught:
        list(s)
    assert "StopIteration: from user code" in str(caught.value.__cause__)


class _IterStops:
    """An iterable whose ``__iter__`` raises StopIteration (a bug in user code, not an empty result)."""

    def __iter__(self):
        raise StopIteration("from __iter__")


@pytest.mark.parametrize("rng", [False, True])
def test_stop_iteration_from_iter_of_mapcat_result_is_a_runtime_error(rng):
    # chain.from_iterable called iter() outside the guard: the StopIteration ended the stream silently.
    fn = (
        (lambda x, rng: [x] if x < 2 else _IterStops()) if rng else (lambda x: [x] if x < 2 else _IterStops())
    )
    it = iter(pf.from_iterable(range(5)) | pf.mapcat(fn, rng=rng))
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(RuntimeError, match=r"raised StopIteration") as caught:
        next(it)
    assert caught.value.__cause__.args == ("from __iter__",)


def test_stop_iteration_ending_the_outputs_of_mapcat_is_their_end_not_an_error():
    class Two:
        def __init__(self):
            self.left = 2

        def __iter__(self):
            return self

        def __next__(self):
            if not self.left:
                raise StopIteration
            self.left -= 1
            return self.left

    assert list(range(2) | pf.mapcat(lambda x: Two())) == [1, 0, 1, 0]
    assert list(range(2) | pf.mapcat(lambda x, rng: Two(), rng=True)) == [1, 0, 1, 0]
