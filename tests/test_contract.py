"""The contract every operator keeps: pure when seeded, picklable, readable, empty in → empty out,
arguments checked when built."""

from __future__ import annotations

import inspect

import cloudpickle
import numpy as np
import pytest
from helpers import same_items

import pescador_fp as pf

DICTS = [{"x": np.full(2, i, dtype=np.float32), "y": i} for i in range(23)]
BATCHES = [{"x": np.arange(4) + 4 * i} for i in range(5)]

# name -> (operator, input samples, bad argument sets that must fail at build time)
CASES = {
    "map": (pf.map(lambda d: d["y"] * 2), DICTS, [(3,)]),
    "filter": (pf.filter(lambda d: d["y"] % 3), DICTS, [("x",)]),
    "mapcat": (pf.mapcat(lambda d: [d, d]), DICTS, [(None,)]),
    "take": (pf.take(5), DICTS, [(-1,), (1.5,), (2**63,)]),
    "skip": (pf.skip(5), DICTS, [(-1,), ("2",), (2**63,)]),
    "cycle": (pf.cycle(2), DICTS, [(-1,), (2.0,), (2**63,)]),
    "shuffle": (pf.shuffle(7, seed=1), DICTS, [(0,), (4, -1), (4, "seed"), (2**63,)]),
    "batch": (pf.batch(4, partial=True), DICTS, [(0,), (2, "no"), (2, False, "0"), (2**63,), (2, 0, 2**40)]),
    "unbatch": (pf.unbatch(), BATCHES, [(1,)]),
    "tuples": (pf.tuples("y", "x"), DICTS, [()]),
    "keras_tuples": (pf.keras_tuples("x", "y"), DICTS, [(), (None, None), (3,)]),
    "cache": (pf.cache(4, prob=0.3, seed=2), DICTS, [(0,), (4, 2), (4, 0.5, -3), (2**63,)]),
    "background": (pf.background(2), DICTS, [(0,), (1.5,)]),
    "shard": (pf.shard(1, 3), DICTS, [(3, 3), (0, 0), (1.5, 2)]),
    "progress": (pf.progress(), DICTS, [(-1,), (None, 3)]),
}

OPERATOR_NAMES = sorted(CASES)


def test_every_public_operator_is_covered():
    public = {
        name
        for name in pf.__all__
        if inspect.isfunction(getattr(pf, name))
        and str(inspect.signature(getattr(pf, name)).return_annotation).startswith("Operator")
    }
    assert public == set(CASES)


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_pure_when_seeded(name):
    op, data, _ = CASES[name]
    s = data | op
    first = list(s)
    assert first and same_items(first, list(s))
    assert same_items(list(s.iterate(seed=9)), list(s.iterate(seed=9)))


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_picklable_with_cloudpickle(name):
    op, data, _ = CASES[name]
    s = data | op
    clone = cloudpickle.loads(cloudpickle.dumps(s))
    assert clone == s or repr(clone) == repr(s)
    assert same_items(list(clone.iterate(seed=1)), list(s.iterate(seed=1)))


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_readable_repr(name):
    op, data, _ = CASES[name]
    assert repr(op).startswith(f"{name}(") and " at 0x" not in repr(op)
    assert repr(data | op).endswith(f" | {op!r}")


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_empty_input_gives_empty_output(name):
    op, _, _ = CASES[name]
    assert list([] | op) == []


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_arguments_are_checked_when_built(name):
    for args in CASES[name][2]:
        with pytest.raises((TypeError, ValueError)) as info:
            getattr(pf, name)(*args)
        if args:
            assert name in str(info.value) or "seed" in str(info.value)


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_operators_are_values(name):
    op = CASES[name][0]
    assert op.__array_ufunc__ is None
    with pytest.raises(TypeError):
        iter(op)
    with pytest.raises(AttributeError):
        op.anything = 1
    assert cloudpickle.loads(cloudpickle.dumps(op)) is not op
