"""The state of a pass (``Pass.state()``) and the checks that a pass resuming from one makes.

A state is where the *consumer* stands: how many items it has taken from the
pass, the pass's seed (or the entropy that an unseeded pass drew), and, for
the few stages that cannot find their place from that count alone
(``background``: which worker gave each item), what they registered in the
pass's :class:`~pescador_fp._stream.Run`. Every other stage finds its place
again from the count (``Stream._open_at``): arrays and sequences seek, ``map``
and ``batch`` pass the count down, ``shuffle`` and ``mux`` replay their draws
without making items. So a state holds no samples and stays small.
"""

from __future__ import annotations

import hashlib
import numbers
import reprlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._seed import SeedContext, check_seed
from ._stream import Pass, Run, Stream

__all__ = ["FORMAT", "resumed_context", "state_of"]

#: What a state says it is; a state of another format (or another library version) is refused.
FORMAT = "pescador_fp.state/1"
_REPR_CHARS = 2000


def _version() -> str:
    from . import __version__

    return __version__


def _seed_json(root: object) -> Any:
    """The pass seed as JSON: an int, or a SeedSequence's entropy and spawn key."""
    if root is None or isinstance(root, int):
        return root
    assert isinstance(root, np.random.SeedSequence)
    entropy = root.entropy
    return {
        "entropy": [int(e) for e in entropy] if isinstance(entropy, (list, tuple, np.ndarray)) else entropy,
        "spawn_key": [int(k) for k in root.spawn_key],
        "pool_size": int(root.pool_size),
    }


def _walk(stream: Stream[Any], out: list[str]) -> None:
    out.append(stream._fingerprint())
    for child in stream.children:
        _walk(child, out)


def _digest(stream: Stream[Any]) -> str:
    """A digest of the pipeline's structure and arguments (every sub-stream's repr), kept on the stream."""
    cached = stream.__dict__.get("_state_digest") if hasattr(stream, "__dict__") else None
    if cached is not None:
        return str(cached)
    reprs: list[str] = []
    _walk(stream, reprs)
    digest = hashlib.sha256("\n".join(reprs).encode()).hexdigest()[:32]
    if hasattr(stream, "__dict__"):
        object.__setattr__(stream, "_state_digest", digest)  # a frozen value: its digest never changes
    return digest


def state_of(p: Pass[Any]) -> dict[str, Any]:
    """The state of pass ``p`` (see :meth:`Pass.state`)."""
    ctx = p.ctx
    run: Run | None = ctx.run
    stages = {key: where() for key, where in run.states.items()} if run is not None else {}
    return {
        "format": FORMAT,
        "version": _version(),
        "pipeline": repr(p.stream)[:_REPR_CHARS],
        "digest": _digest(p.stream),
        "seed": _seed_json(ctx.root),
        "entropy": None if ctx.fallback is None else f"{ctx.fallback:x}",
        "items": p.taken,
        "stages": stages,
    }


def _differs(saved: str, now: str) -> str:
    """Where two pipeline reprs first differ, stage by stage."""
    for i, (a, b) in enumerate(zip(saved.split(" | "), now.split(" | "))):
        if a != b:
            return f"stage {i}: the state has {a!r}, this stream has {b!r}"
    return f"the state's pipeline is {saved!r}, this stream is {now!r}"


def resumed_context(stream: Stream[Any], seed: object, state: object) -> tuple[SeedContext, int]:
    """The seed context and the number of items taken for a pass that resumes from ``state``."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"iterate: state must be the dict that Pass.state() returned, got {reprlib.repr(state)} "
            f"({type(state).__name__})"
        )
    if state.get("format") != FORMAT:
        raise ValueError(
            f"iterate: state is not a pescador_fp pass state of format {FORMAT!r}: "
            f"its format is {state.get('format')!r}"
        )
    if state.get("version") != _version():
        raise ValueError(
            f"iterate: the state was saved by pescador_fp {state.get('version')!r}, this is "
            f"{_version()!r}; a state is only restored by the version that saved it"
        )
    now = repr(stream)[:_REPR_CHARS]
    if state.get("pipeline") != now or state.get("digest") != _digest(stream):
        where = _differs(str(state.get("pipeline")), now)
        if state.get("pipeline") == now:
            where = "the pipelines print the same, but their sources or arguments differ"
        raise ValueError(f"iterate: the state was saved from another pipeline ({where})")
    root = check_seed("seed", seed)
    if _seed_json(root) != state.get("seed"):
        raise ValueError(
            f"iterate: the state was saved from a pass with seed={state.get('seed')!r}, "
            f"not seed={_seed_json(root)!r}; resume with the seed of the pass that saved it"
        )
    taken = state.get("items")
    if isinstance(taken, bool) or not isinstance(taken, numbers.Integral) or taken < 0:
        raise ValueError(f"iterate: the state's item count must be an int >= 0, got {taken!r}")
    entropy = state.get("entropy")
    fallback = None if entropy is None else int(str(entropy), 16)
    stages = state.get("stages") or {}
    if not isinstance(stages, Mapping):
        raise ValueError(f"iterate: the state's stages must be a dict, got {reprlib.repr(stages)}")
    return SeedContext(root, (), fallback, Run(stages)), int(taken)
