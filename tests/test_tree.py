"""Flattening and rebuilding nested samples."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from helpers import same
from hypothesis import given
from hypothesis import strategies as st

from pescador_fp._tree import flatten, unflatten

Pair = namedtuple("Pair", "a b")

trees = st.recursive(
    st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats(allow_nan=False)),
    lambda children: st.one_of(
        st.dictionaries(st.text(max_size=2), children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.tuples(children, children).map(lambda t: Pair(*t)),
    ),
    max_leaves=8,
)


@given(trees)
def test_flatten_then_unflatten_is_the_identity(tree):
    leaves, spec = flatten(tree)
    rebuilt = unflatten(spec, leaves)
    assert rebuilt == tree and type(rebuilt) is type(tree)


def test_leaves_come_out_in_order_and_can_be_replaced():
    tree = {"x": np.zeros(2), "y": (1, [2, 3])}
    leaves, spec = flatten(tree)
    assert [np.ndim(v) for v in leaves] == [1, 0, 0, 0]
    assert same(unflatten(spec, [np.ones(2), 10, 20, 30]), {"x": np.ones(2), "y": (10, [20, 30])})
