"""stats() and head() at their edges: zero-copy views, a background opened again, closed and failed
passes, stages that print alike (found by a red-team review of issue 11)."""

from __future__ import annotations

import time

import numpy as np

import pescador_fp as pf


def _slow(x):
    time.sleep(0.002)
    return x


def _even(x):
    return x % 2 == 0


def _big(i):
    return np.full(16384, i, np.float32)


def _arr(i):
    return np.full(64, i, np.float32)


def test_head_with_zero_copy_returns_the_first_items() -> None:
    s = (
        pf.from_iterable(range(100))
        | pf.map(_big)
        | pf.background(workers=1, zero_copy=True, ring_bytes=300000)
    )
    got = s.head(20)
    assert [int(x[0]) for x in got] == list(range(20))


def test_worker_rows_add_up_over_reopenings_like_stage_rows() -> None:
    s = pf.from_iterable(range(50)) | pf.map(_arr) | pf.background(workers=2) | pf.cycle(3)
    it = s.iterate(seed=0)
    assert sum(1 for _ in it) == 150
    assert sum(r["items"] for r in it.stats()["workers"]) == 150


def test_worker_items_per_s_stay_as_they_were_after_close() -> None:
    s = pf.from_iterable(range(200)) | pf.map(_arr) | pf.background(workers=2)
    it = s.iterate(seed=0)
    for _ in range(20):
        next(it)
    it.close()
    before = [r["items_per_s"] for r in it.stats()["workers"]]
    time.sleep(0.5)
    assert [r["items_per_s"] for r in it.stats()["workers"]] == before


def test_two_muxes_with_the_same_repr_are_listed_apart() -> None:
    def mk():
        return pf.mux(
            [pf.from_iterable(range(3)), pf.from_iterable(range(4))], n_active=1, mode="exhaustive", seed=0
        )

    it = (pf.round_robin([mk(), mk()]) | pf.map(abs)).iterate(seed=0)
    list(it)
    assert str(it.stats()).count("sources of") == 2
