"""The item codec: what a worker sends comes back as the consumer would have had it without background.

Every test goes through real worker processes (``pf.background``). Those
about the user's ``__main__`` run a real script in a subprocess, since
pytest's own ``__main__`` is not a script. Run the file under
``PESCADOR_FP_START_METHOD=fork``, ``forkserver`` and ``spawn`` too: the
tests that do not name a start method use the default.
"""

from __future__ import annotations

import dataclasses
import json
import linecache
import os
import subprocess
import sys
import textwrap
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
from helpers import own_shm_entries
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pescador_fp as pf

START_METHODS = ["fork", "forkserver", "spawn"]
# A script run in a subprocess must be done by then (a spawned worker imports numpy first).
SCRIPT_TIMEOUT_S = 60

Point = namedtuple("Point", "x y")


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = own_shm_entries()
    yield
    assert own_shm_entries() == before


def run_script(tmp_path: Any, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script (its own ``__main__``) with this interpreter."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    # The script imports the pescador_fp under test, wherever it is.
    here = os.path.dirname(os.path.dirname(pf.__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
    )


def identical(got: Any, sent: Any) -> bool:
    """Same container types all the way down; arrays (not numpy scalars) of one dtype, shape and bytes."""
    if isinstance(sent, np.ndarray):
        if type(got) is not np.ndarray or got.dtype != sent.dtype or got.shape != sent.shape:
            return False
        if sent.dtype.hasobject:
            return bool(got.tolist() == sent.tolist())
        return got.tobytes() == sent.tobytes()
    if isinstance(sent, dict):
        return (
            type(got) is dict and got.keys() == sent.keys() and all(identical(got[k], sent[k]) for k in sent)
        )
    if isinstance(sent, (tuple, list)):
        return type(got) is type(sent) and len(got) == len(sent) and all(map(identical, got, sent))
    return type(got) is type(sent) and bool(got == sent)


# ------------------------------------------------------------ the user's own classes (issue 8, item 6)

CLASSES_SCRIPT = """
    import collections
    import dataclasses
    import json
    import os
    import sys

    import numpy as np
    import pescador_fp as pf


    @dataclasses.dataclass
    class Sample:
        x: int
        name: str


    Pair = collections.namedtuple("Pair", "left right")


    class Oops(Exception):
        pass


    def make(i):
        if i == 5:
            raise Oops("five")
        return {"sample": Sample(i, str(i)), "pair": Pair(i, np.arange(3) + i), "late": Late(i)}


    if __name__ == "__main__":

        @dataclasses.dataclass(frozen=True)
        class Late:  # only in this process's __main__: a spawned worker's main never defines it
            i: int

        method = sys.argv[1]
        stream = pf.from_iterable(range(8)) | pf.map(make) | pf.background(workers=2, start_method=method)
        got = []
        caught = None
        try:
            for item in stream:
                got.append(item)
        except Oops as error:  # the script's own exception class
            caught = type(error) is Oops and str(error) == "five"
        expected = [make(i) for i in range(5)]
        print(json.dumps({
            "count": len(got),
            "own_classes": all(
                type(g["sample"]) is Sample and type(g["pair"]) is Pair and type(g["late"]) is Late
                for g in got
            ),
            "equal": all(
                g["sample"] == e["sample"] and g["late"] == e["late"] and g["pair"].left == e["pair"].left
                and (g["pair"].right == e["pair"].right).all()
                for g, e in zip(got, expected)
            ),
            "caught": caught,
            "rings_left": [f for f in os.listdir("/dev/shm") if f.startswith(f"pfp_{os.getpid()}_")],
        }))
"""


@pytest.mark.timeout(SCRIPT_TIMEOUT_S * 2)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_items_of_classes_defined_in_a_script_come_back_as_the_script_s_own(tmp_path, start_method):
    done = run_script(tmp_path, CLASSES_SCRIPT, start_method)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "count": 5,
        "own_classes": True,
        "equal": True,
        "caught": True,
        "rings_left": [],
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_items_of_local_classes_come_back_as_the_consumer_s_own(start_method):
    @dataclasses.dataclass
    class Local:  # pickled by value: not importable anywhere
        i: int

    Row = namedtuple("Row", "i label")
    stream = (
        pf.from_iterable(range(6))
        | pf.map(lambda i: [Local(i), Row(i, f"#{i}")] if i % 2 else Local(i))
        | pf.background(start_method=start_method)
    )
    got = list(stream)
    assert got == [
        Local(0),
        [Local(1), Row(1, "#1")],
        Local(2),
        [Local(3), Row(3, "#3")],
        Local(4),
        [Local(5), Row(5, "#5")],
    ]
    assert all(type(x) is Local or (type(x[0]) is Local and type(x[1]) is Row) for x in got)


@pytest.mark.timeout(60)
def test_items_that_only_cloudpickle_can_send_still_travel():
    offset = 10
    stream = pf.from_iterable(range(4)) | pf.map(lambda i: {"i": i, "add": lambda x: x + i + offset})
    got = list(stream | pf.background())
    assert [item["add"](1) for item in got] == [11, 12, 13, 14]


# ------------------------------------------------------------ arrays of every kind (issue 8, item 7)


def listed_arrays() -> list[Any]:
    structured = np.array([(1, 2.5, b"ab"), (3, 4.5, b"c")], dtype=[("a", ">i2"), ("b", "<f8"), ("c", "S2")])
    return [
        np.array(5.0),  # 0-d, three in a row: the quick paths
        np.array(6.0),
        np.array(7.0),
        np.zeros((), "i4,f8"),  # 0-d structured
        np.ones((), "i4,f8"),
        np.arange(4).astype("M8[s]"),  # datetime64, timedelta64 with units
        np.arange(4).astype(">M8[s]") + np.timedelta64(1, "s"),
        np.arange(6).astype("m8[ms]").reshape(2, 3),
        np.array("2024-02-29T12", "M8[h]"),
        np.arange(6, dtype=">i4").reshape(2, 3),  # byte order
        np.arange(3, dtype=">f8"),
        structured,
        np.array(["ab", "c", ""]),
        np.array([b"ab", b"c"]),
        np.array([True, False]),
        np.array([1 + 2j, -1j], np.complex64),
        np.array([1.5, np.nan, np.inf], np.float16),
        np.array([{"a": 1}, None, "s"], dtype=object),
        np.arange(20)[::3],  # not contiguous
        np.arange(20, dtype=">i2")[::3],
        np.arange(24, dtype=">c8").reshape(4, 6)[::2, 1::2],
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.asfortranarray(np.arange(6, dtype=">u4").reshape(2, 3)),
        np.asfortranarray(np.arange(6).astype(">m8[us]").reshape(2, 3)),
        np.zeros(0),
        np.zeros((3, 0, 2), np.int8),
        np.zeros((0,), "M8[ns]"),
        {"when": np.arange(3).astype("M8[D]"), "x": np.array(1.0), "s": np.zeros((), "i4,f8")},
        (np.array(2), [np.arange(2).astype("m8[s]"), np.zeros((), "U3")]),
        Point(np.array(1.5), np.array([[1], [2]], ">u2")),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_arrays_of_every_kind_come_back_as_arrays_of_the_same_dtype_shape_and_values(start_method):
    sent = listed_arrays()
    got = list(pf.from_iterable(sent) | pf.background(start_method=start_method))
    assert len(got) == len(sent)
    for g, s in zip(got, sent):
        assert identical(g, s), (g, s)
    for x in got[:3]:
        x[...] = 5  # a 0-d array, not a numpy scalar, and the consumer's own
    assert [float(x) for x in got[:3]] == [5.0, 5.0, 5.0]


scalar_dtypes = (
    hnp.scalar_dtypes()
    | hnp.integer_dtypes(endianness="?")
    | hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64))
    | hnp.datetime64_dtypes(endianness="?")
    | hnp.timedelta64_dtypes(endianness="?")
    | hnp.unicode_string_dtypes(endianness="?", max_len=4)
    | hnp.byte_string_dtypes(max_len=4)
)
dtypes = scalar_dtypes | hnp.array_dtypes(subtype_strategy=scalar_dtypes, max_size=3)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def array_items(draw: Any) -> list[Any]:
    """A few arrays of one dtype and shape in a row (the quick paths), some inside containers or strided."""
    dtype, shape = draw(dtypes), draw(shapes)
    arrays = draw(st.lists(hnp.arrays(dtype, shape), min_size=1, max_size=4))
    wraps = ["bare", "tuple", "list", "namedtuple", "dict", "fortran", "strided"]
    if dtype.kind in "mM" and not dtype.isnative:
        wraps = wraps[:1] + wraps[-3:]  # numpy's pickle makes these native inside other containers
    items: list[Any] = []
    for array in arrays:
        wrap = draw(st.sampled_from(wraps))
        if wrap == "dict":
            items.append({"a": array, "b": array.copy()})
        elif wrap == "tuple":
            items.append((array, 1))
        elif wrap == "list":
            items.append([array])
        elif wrap == "namedtuple":
            items.append(Point(array, "y"))
        elif wrap == "fortran":
            items.append(np.asfortranarray(array))
        elif wrap == "strided" and array.ndim:
            items.append(array[::2])
        else:
            items.append(array)
    return items


@pytest.mark.timeout(240)
@settings(max_examples=60, deadline=None)
@given(items=array_items(), workers=st.integers(1, 2))
def test_background_gives_back_every_array_as_it_was_sent(items, workers):
    s = pf.from_iterable(items)
    got = list(s | pf.background(workers=workers))
    sent = list(s)
    assert len(got) == len(sent)
    for g, x in zip(got, sent):
        assert identical(g, x), (g, x)


# ------------------------------------------------------------ kept items own their memory (issue 8, item 8)


def root(array: np.ndarray) -> Any:
    """The object at the end of ``array``'s chain of bases (the array itself if it owns its data)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def arrays_in(item: Any) -> list[np.ndarray]:
    if isinstance(item, np.ndarray):
        return [item]
    if isinstance(item, dict):
        return [a for v in item.values() for a in arrays_in(v)]
    if isinstance(item, (tuple, list)):
        return [a for v in item for a in arrays_in(v)]
    return []


def owned_bytes(array: np.ndarray) -> int:
    """How many bytes the memory behind ``array`` holds."""
    base = root(array)
    return base.nbytes if isinstance(base, (np.ndarray, memoryview)) else len(base)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_each_item_from_background_owns_only_its_own_bytes(start_method):
    def make(i: int) -> Any:
        kind = i // 300
        if kind == 0:
            return np.full(256, i, np.float32)  # 1 KiB: runs of like records
        if kind == 1:
            return np.full(4096, i, np.float32)  # 16 KiB
        if kind == 2:
            return np.array(i)  # 0-d
        if kind == 3:
            return {"x": np.full(8, i), "y": np.full((2, 2), i % 100, np.int8)}
        return (np.full(3, i), [np.full(5, i, np.float16)])

    items = list(pf.from_iterable(range(1500)) | pf.map(make) | pf.background(start_method=start_method))
    arrays = [a for item in items for a in arrays_in(item)]
    assert len(arrays) == 300 * 3 + 600 * 2
    assert all(owned_bytes(a) == a.nbytes for a in arrays)
    assert len({id(root(a)) for a in arrays}) == len(arrays)  # no two share memory
    assert all(a.flags.writeable for a in arrays)


# ------------------------------------------------------------ worker tracebacks (issue 8, item 14)

TRACEBACK_SCRIPT = """
    import sys

    import pescador_fp as pf


    def check(i):
        if i == 3:
            raise ValueError(f"sample {i} is corrupt")
        return i


    if __name__ == "__main__":
        which = sys.argv[2]
        fn = check if which == "function" else lambda i: i // (i - 3)
        list(pf.from_iterable(range(10)) | pf.map(fn) | pf.background(start_method=sys.argv[1]))
"""


def worker_part(stderr: str) -> str:
    """What the user sees first: the worker's traceback, before the consumer's."""
    return stderr.split("The above exception was the direct cause")[0]


@pytest.mark.timeout(SCRIPT_TIMEOUT_S * 2)
@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize(
    ("which", "line", "source"),
    [
        ("function", 9, 'raise ValueError(f"sample {i} is corrupt")'),
        ("lambda", 15, "fn = check if which == "),
    ],
)
def test_a_worker_traceback_shows_the_script_s_file_and_line(tmp_path, start_method, which, line, source):
    done = run_script(tmp_path, TRACEBACK_SCRIPT, start_method, which)
    assert done.returncode != 0
    shown = worker_part(done.stderr)
    script = str(tmp_path / "script.py")
    assert f'File "{script}", line {line}, in ' in shown, done.stderr
    assert source in shown, done.stderr
    assert "<dynamic-code>" not in done.stderr
    assert f"{os.sep}pescador_fp{os.sep}" not in shown, done.stderr
    error = "ValueError: sample 3 is corrupt" if which == "function" else "ZeroDivisionError"
    assert error in shown and done.stderr.rstrip().splitlines()[-1].startswith(error.split(":")[0])


def remote_text(stream: pf.Stream[Any], error_type: type[BaseException]) -> str:
    with pytest.raises(error_type) as caught:
        list(stream)
    cause = caught.value.__cause__
    assert cause is not None
    return str(cause)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_worker_traceback_shows_a_test_module_s_local_function_and_line(start_method):
    def check(i: int) -> int:  # local: pickled by value
        if i == 2:
            raise KeyError(f"no sample {i}")  # the line the user must see
        return i

    text = remote_text(
        pf.from_iterable(range(5)) | pf.map(check) | pf.background(start_method=start_method), KeyError
    )
    line = check.__code__.co_firstlineno + 2
    assert f'File "{__file__}", line {line}, in check' in text, text
    assert 'raise KeyError(f"no sample {i}")  # the line the user must see' in text
    assert "<dynamic-code>" not in text
    assert f"{os.sep}pescador_fp{os.sep}" not in text, text


CELL = """\
import numpy as np

def cell_check(i):
    if i == 4:
        raise RuntimeError("bad cell sample")
    return np.full(2, i)
"""


@pytest.fixture
def notebook_cell():
    """A function from a notebook cell: compiled from a string whose name IPython registers in linecache."""
    name = "<ipython-input-7-0123456789ab>"
    linecache.cache[name] = (len(CELL), None, CELL.splitlines(keepends=True), name)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(CELL, name, "exec"), namespace)
    yield name, namespace["cell_check"]
    linecache.cache.pop(name, None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_worker_traceback_shows_a_notebook_cell_and_line(notebook_cell, start_method):
    name, cell_check = notebook_cell
    stream = pf.from_iterable(range(6)) | pf.map(cell_check) | pf.background(start_method=start_method)
    text = remote_text(stream, RuntimeError)
    assert f'File "{name}", line 5, in cell_check' in text, text
    assert 'raise RuntimeError("bad cell sample")' in text, text
    assert "<dynamic-code>" not in text


@pytest.mark.timeout(60)
def test_an_error_raised_by_the_library_in_a_worker_keeps_its_frames():
    stream = pf.from_iterable([np.zeros(2), np.zeros(3)]) | pf.batch(2) | pf.background()
    text = remote_text(stream, pf.DataError)
    assert "Traceback (most recent call last)" in text
    assert "batch.py" in text, text  # nothing of the user's to show: the library's frames stay
