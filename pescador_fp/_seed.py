"""Seed trees: the one place where randomness is derived.

Every pass over a stream carries a :class:`SeedContext`. It holds the pass
root (the ``seed`` given to ``Stream.iterate``, or ``None``) and a *branch
path*: the positions taken so far through the pipeline's tree (which
sub-stream of a mux, which repetition of a cycle). A random operator asks the
context for its generator, giving its own ``seed`` argument and its *depth*
(how many operators separate it from the source of its branch). The
generator's entropy is

- the operator's seed and the pass root, when both are given;
- whichever of the two is given, otherwise;
- the pass's own entropy (``fallback``, drawn once when the pass starts),
  when neither is: such a pass is random, yet every generator of it can be
  made again (a resumed pass, a retried part on another machine).

and its ``spawn_key`` is ``(*branch_path, depth)``, so that two random
operators of one pass never share a generator. Nothing here reads or writes
the global numpy or ``random`` state.

The branch paths each combinator adds (``ctx.child(...)``), in one table:

=====================  ==========================================  ========================
who                    child path                                  for
=====================  ==========================================  ========================
``mux``                ``(source, activation)``                    each opening of a source
``shuffled_mux``       ``(source, restart)``                       each pass over a source
``round_robin``        ``(source, round)``                         each round's opening
``chain``              ``(0, round)`` / ``(1, round, i)``          the stream of streams / sub-stream ``i``
``cycle``              ``(repetition,)``                           each pass of the upstream
``background``, shard  ``(WORKER_BRANCH, part)``                   each worker's (rank's) part
``background`` merge   generator ``(MERGE_SEED, depth)``           the weighted merge of parts
=====================  ==========================================  ========================

A seeded mux, shuffled_mux or round_robin first re-roots its sources
(``reseeded``), so that its own seed fixes everything below it.
"""

from __future__ import annotations

import numbers
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MERGE_SEED", "WORKER_BRANCH", "Seed", "SeedContext", "check_seed", "seed_argument"]

Seed = int | np.integer | np.random.SeedSequence

# Domain tags keep "operator seed 1" and "pass seed 1" apart.
_TAG_OPERATOR = 0x6F70  # "op"
_TAG_PASS = 0x7061  # "pa"
_TAG_FALLBACK = 0x6661  # "fa"
_STATE_WORDS = 4
# Branch of the seed tree that the parts of a divided stream (background workers, shard
# ranks) hang from, and the seed tag of background's weighted merge of those parts.
WORKER_BRANCH = 0x6267  # "bg"
MERGE_SEED = 0x6D65  # "me"


def seed_argument(seed: Seed | None) -> str:
    """``, seed=...`` for an operator's repr (one line, a SeedSequence too), or ``""`` for no seed.

    >>> seed_argument(7), seed_argument(np.random.SeedSequence(1).spawn(2)[1]), seed_argument(None)
    (', seed=7', ', seed=SeedSequence(entropy=1, spawn_key=(1,))', '')
    """
    if seed is None:
        return ""
    if isinstance(seed, np.random.SeedSequence):
        spawn_key = f", spawn_key={seed.spawn_key!r}" if seed.spawn_key else ""
        return f", seed=SeedSequence(entropy={seed.entropy!r}{spawn_key})"
    return f", seed={seed!r}"


def check_seed(name: str, seed: object) -> Seed | None:
    """Return ``seed`` if it can seed a pass or an operator, else raise.

    >>> check_seed("seed", 3)
    3
    >>> check_seed("seed", -1)
    Traceback (most recent call last):
    ...
    ValueError: seed must be a non-negative int or a numpy SeedSequence, got -1
    """
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"{name} must be None, a non-negative int or a numpy SeedSequence, "
            f"got {seed!r} ({type(seed).__name__})"
        )
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int or a numpy SeedSequence, got {seed!r}")
    return int(seed)


def _words(seed: Seed) -> list[int]:
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    return [int(w) for w in sequence.generate_state(_STATE_WORDS)]


@dataclass(frozen=True)
class SeedContext:
    """Where a pass stands in the seed tree: its root seed and branch path.

    >>> a = SeedContext.for_pass(7).generator(None, depth=1)
    >>> b = SeedContext.for_pass(7).generator(None, depth=1)
    >>> int(a.integers(1 << 30)) == int(b.integers(1 << 30))
    True
    """

    root: Seed | None
    path: tuple[int, ...] = ()
    #: The pass's own entropy, for generators with neither an operator seed nor a pass seed
    #: (``None``: fresh OS entropy each time).
    fallback: int | None = None
    #: Book-keeping of the pass in the consumer's process (what stages register for
    #: ``stats()`` and ``state()``); it does not travel to worker processes.
    run: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def for_pass(cls, seed: object = None, fallback: int | None = None, run: Any = None) -> SeedContext:
        """Start the seed tree of one pass; ``seed=None`` leaves it unseeded.

        An unseeded pass draws its ``fallback`` entropy here, once.
        """
        root = check_seed("seed", seed)
        if root is None and fallback is None:
            fallback = secrets.randbits(128)
        return cls(root, (), fallback, run)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SeedContext, (self.root, self.path, self.fallback))

    def at(self, path: tuple[int, ...]) -> SeedContext:
        """This pass's context at another branch path."""
        return SeedContext(self.root, path, self.fallback, self.run)

    def child(self, *keys: int) -> SeedContext:
        """The context of a branch: a sub-stream, a repetition, a worker."""
        return SeedContext(self.root, self.path + keys, self.fallback, self.run)

    def reseeded(self, seed: Seed | None, depth: int) -> SeedContext:
        """The context below a seeded multiplexer at ``depth``: its seed roots its sources' randomness.

        So a seeded ``mux`` is reproducible even where its sources hold unseeded
        random operators; with no seed here and no pass seed, nothing changes.
        """
        sequence = self.sequence(seed, depth)
        return self if sequence is None else SeedContext(sequence, self.path, self.fallback, self.run)

    def sequence(self, seed: Seed | None, depth: int) -> np.random.SeedSequence | None:
        """The SeedSequence for an operator at ``depth``; ``None``: neither it nor the pass is seeded."""
        entropy: list[int] = []
        if seed is not None:
            entropy += [_TAG_OPERATOR, *_words(seed)]
        if self.root is not None:
            entropy += [_TAG_PASS, *_words(self.root)]
        if not entropy:
            return None
        return np.random.SeedSequence(entropy, spawn_key=(*self.path, depth))

    def entropy(self, seed: Seed | None, depth: int) -> np.random.SeedSequence:
        """The SeedSequence for an operator at ``depth``; the pass's own entropy where nothing is seeded."""
        sequence = self.sequence(seed, depth)
        if sequence is not None:
            return sequence
        if self.fallback is None:
            return np.random.SeedSequence()
        return np.random.SeedSequence([_TAG_FALLBACK, self.fallback], spawn_key=(*self.path, depth))

    def generator(self, seed: Seed | None, depth: int) -> np.random.Generator:
        """A fresh generator for a random operator at ``depth`` of this branch."""
        return np.random.default_rng(self.entropy(seed, depth))
