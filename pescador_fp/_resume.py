"""The state of a pass (``Pass.state()``) and the checks that a pass resuming from one makes.

A state is where the *consumer* stands: how many items it has taken from the
pass, the pass's seed (or the entropy that an unseeded pass drew), and, for
the few stages that cannot find their place from that count alone
(``background``: which worker gave each item), what they registered in the
pass's :class:`~pescador_fp._pass.Run`. Every other stage finds its place
again from the count (``Stream._open_at``): arrays and sequences seek, ``map``
and ``batch`` pass the count down, ``shuffle`` and ``mux`` replay their draws
without making items. So a state holds no samples and stays small.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import numbers
import re
import reprlib
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._seed import Seed, SeedContext, check_seed
from ._stream import Applied, Operator, Stream
from ._version import __version__

__all__ = ["FORMAT", "digest", "resumed_context", "state_of"]

#: What a state says it is; a state of another format (or another library version) is refused.
FORMAT = "pescador_fp.state/1"
_REPR_CHARS = 2000


def _seed_json(root: object) -> Any:
    """The pass seed as JSON: an int, or a SeedSequence's entropy (hex: beyond 64 bits) and spawn key."""
    if root is None or isinstance(root, int):
        return root
    assert isinstance(root, np.random.SeedSequence)
    entropy = root.entropy
    words: Any = entropy if isinstance(entropy, (list, tuple, np.ndarray)) else [entropy]
    return {
        "entropy": [f"{int(e):x}" for e in words],
        "spawn_key": [int(k) for k in root.spawn_key],
        "pool_size": int(root.pool_size),
    }


# A default repr's memory address changes from process to process: a state must not depend on it.
_ADDRESS = re.compile(r"( object)?( at)? ?(0x|x)[0-9a-fA-F]{6,}|\.\.\.[0-9a-fA-F]+(?=>)")


def _stable(text: str) -> str:
    """``text`` without memory addresses."""
    return _ADDRESS.sub("", text)


def _code_text(code: types.CodeType) -> str:
    """A function's code: its bytecode, constants (nested code by its own text) and names."""
    consts = [_code_text(c) if isinstance(c, types.CodeType) else _stable(repr(c)) for c in code.co_consts]
    body = code.co_code + repr((consts, code.co_names, code.co_varnames)).encode()
    return hashlib.sha256(body).hexdigest()[:16]


def _callable_text(fn: Any) -> str:
    """What tells a function from another that prints the same: its code, closure, bound object."""
    if isinstance(fn, functools.partial):
        return f"partial({_callable_text(fn.func)}, {_value_text(fn.args)}, {_value_text(fn.keywords)})"
    if inspect.ismethod(fn):
        return f"{_callable_text(fn.__func__)} of {_value_text(fn.__self__)}"
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        cells = []
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                cells.append(None)
        defaults = (getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None))
        name = getattr(fn, "__qualname__", "")
        return f"{name}:{_code_text(code)}:{_value_text(cells)}:{_value_text(defaults)}"
    return _value_text(fn)


def _value_text(value: Any) -> str:
    """A short, stable text for a value: its repr without addresses, and an object's attributes."""
    text = _stable(reprlib.repr(value))
    attributes = getattr(value, "__dict__", None)
    if (
        isinstance(attributes, dict)
        and not isinstance(value, type)
        and not callable(getattr(value, "__code__", 0))
    ):
        text += _stable(reprlib.repr(attributes))
    return text


def _walk(stream: Stream[Any], out: list[str]) -> None:
    out.append(_stable(stream._fingerprint()))
    stage: object = stream.op if isinstance(stream, Applied) else stream
    for value in getattr(stage, "__dict__", {}).values():
        if callable(value) and not isinstance(value, (Stream, Operator, type)):
            out.append(_callable_text(value))
    for child in stream.children:
        _walk(child, out)


def digest(stream: Stream[Any]) -> str:
    """A digest of the pipeline's structure and arguments, kept on the stream (a frozen value).

    Every sub-stream's repr, a sample of each source's data, and the code,
    closure and bound object of each function: a state restores only into a
    pipeline built the same way, in this process or after a restart.
    """
    cached = stream.__dict__.get("_state_digest") if hasattr(stream, "__dict__") else None
    if cached is not None:
        return str(cached)
    reprs: list[str] = []
    _walk(stream, reprs)
    value = hashlib.sha256("\n".join(reprs).encode()).hexdigest()[:32]
    if hasattr(stream, "__dict__"):
        object.__setattr__(stream, "_state_digest", value)  # a frozen value: its digest never changes
    return value


def state_of(stream: Stream[Any], ctx: SeedContext, taken: int) -> dict[str, Any]:
    """The state of a pass over ``stream`` whose consumer has taken ``taken`` items (``Pass.state``)."""
    run = ctx.run  # the pass's Run (_pass.py): what its stages registered
    stages: dict[str, Any] = {}
    if run is not None:
        # A resumed stage that has not started again yet keeps what it saved.
        stages.update(run.restored)
        stages.update((key, where()) for key, where in run.states.items())
    return {
        "format": FORMAT,
        "version": __version__,
        "pipeline": _stable(repr(stream))[:_REPR_CHARS],
        "digest": digest(stream),
        "seed": _seed_json(ctx.root),
        "entropy": None if ctx.fallback is None else f"{ctx.fallback:x}",
        "items": taken,
        "stages": stages,
    }


def _stages(text: str) -> list[str]:
    """A pipeline's repr cut into its stages: at the `` | `` outside brackets."""
    stages, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(" | ", i):
            stages.append(text[start:i])
            start = i + 3
    return [*stages, text[start:]]


def _differs(saved: str, now: str) -> str:
    """Where two pipeline reprs first differ, stage by stage."""
    for i, (a, b) in enumerate(zip(_stages(saved), _stages(now))):
        if a != b:
            return f"stage {i}: the state has {a!r}, this stream has {b!r}"
    return f"the state's pipeline is {saved!r}, this stream is {now!r}"


def resumed_context(
    stream: Stream[Any], seed: object, state: object
) -> tuple[Seed | None, int | None, Mapping[str, Any], int]:
    """For a pass resuming from ``state``: its seed, the entropy drawn, stages' states, items taken."""
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
    if state.get("version") != __version__:
        raise ValueError(
            f"iterate: the state was saved by pescador_fp {state.get('version')!r}, this is "
            f"{__version__!r}; a state is only restored by the version that saved it"
        )
    now = _stable(repr(stream))[:_REPR_CHARS]
    if state.get("pipeline") != now or state.get("digest") != digest(stream):
        where = _differs(str(state.get("pipeline")), now)
        if state.get("pipeline") == now:
            where = (
                "the pipelines print the same, but their sources' data, their functions or their "
                "arguments differ; a set iterates in another order in another process: give a sorted list"
            )
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
    return root, fallback, stages, int(taken)
