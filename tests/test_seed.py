"""The seed tree: derivation rules, independence of branches, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from pescador_fp._seed import SeedContext, check_seed


def draw(ctx: SeedContext, seed, depth: int = 1) -> list[int]:
    return ctx.generator(seed, depth).integers(0, 2**62, 4).tolist()


def test_same_inputs_give_the_same_generator():
    assert draw(SeedContext.for_pass(3), 5) == draw(SeedContext.for_pass(3), 5)
    assert draw(SeedContext.for_pass(None), 5) == draw(SeedContext.for_pass(None), 5)
    assert draw(SeedContext.for_pass(3), None) == draw(SeedContext.for_pass(3), None)


def test_operator_seed_and_pass_seed_are_not_interchangeable():
    assert draw(SeedContext.for_pass(None), 1) != draw(SeedContext.for_pass(1), None)
    assert draw(SeedContext.for_pass(1), 2) != draw(SeedContext.for_pass(2), 1)


def test_depth_and_branch_separate_generators():
    ctx = SeedContext.for_pass(0)
    assert draw(ctx, None, 1) != draw(ctx, None, 2)
    assert draw(ctx.child(0), None, 1) != draw(ctx.child(1), None, 1)
    assert draw(ctx.child(0, 1), None, 1) != draw(ctx.child(1, 0), None, 1)


def test_no_seed_anywhere_draws_the_pass_entropy_once():
    # Each unseeded pass draws its own entropy (passes differ), once: a generator of the pass can
    # be made again (a resumed pass, a retried part), and distinct branches still differ.
    ctx, other = SeedContext.for_pass(None), SeedContext.for_pass(None)
    assert ctx.sequence(None, 1) is None
    assert draw(ctx, None) == draw(ctx, None)
    assert draw(ctx, None) != draw(other, None)
    assert draw(ctx.child(0), None) != draw(ctx.child(1), None)
    assert draw(SeedContext(None), None) != draw(SeedContext(None), None)  # no pass entropy: OS entropy


def test_seed_sequences_are_accepted_and_distinguished():
    a = draw(SeedContext.for_pass(np.random.SeedSequence(9)), None)
    b = draw(SeedContext.for_pass(np.random.SeedSequence(9).spawn(1)[0]), None)
    assert a != b


@pytest.mark.parametrize(
    "bad, error", [(-1, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError)]
)
def test_bad_seeds_are_refused_with_the_value_named(bad, error):
    with pytest.raises(error, match=repr(bad).replace(".", r"\.")):
        check_seed("seed", bad)


def test_numpy_integers_are_seeds():
    assert check_seed("seed", np.int64(4)) == 4
