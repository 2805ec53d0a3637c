"""Stream and Operator values: re-iterability, |, composition, pipe, repr, pickling, seeds."""

from __future__ import annotations

import inspect
import pickle
import re

import cloudpickle
import numpy as np
import pytest
from helpers import Recorder, same_items

import pescador_fp as pf

OP = pf.map(lambda x: x + 1)


def test_streams_are_reiterable_and_unchanged_by_pipes():
    base = pf.from_iterable(range(5))
    derived = base | pf.map(lambda x: x * 2)
    assert list(derived) == list(derived) == [0, 2, 4, 6, 8]
    assert list(base) == [0, 1, 2, 3, 4]


def test_seeded_pipeline_is_pure():
    s = pf.from_iterable(range(100)) | pf.shuffle(10, seed=3) | pf.cache(5, seed=4) | pf.take(50)
    assert list(s) == list(s)


def test_iterate_seed_is_reproducible_and_reshuffles():
    s = pf.from_iterable(range(100)) | pf.shuffle(100)
    orders = [list(s.iterate(seed=k)) for k in range(5)]
    assert orders == [list(s.iterate(seed=k)) for k in range(5)]
    assert len({tuple(o) for o in orders}) == 5
    assert all(sorted(o) == list(range(100)) for o in orders)


def test_iterate_seed_combines_with_operator_seed():
    s = pf.from_iterable(range(50)) | pf.shuffle(50, seed=1)
    assert list(s.iterate(seed=0)) != list(s.iterate(seed=1))
    assert list(s.iterate(seed=0)) != list(s)  # the pass root changes a seeded operator's order


def test_unseeded_passes_draw_fresh_entropy():
    s = pf.from_iterable(range(200)) | pf.shuffle(200)
    assert list(s) != list(s)


def test_two_unseeded_shuffles_in_one_pass_use_different_generators():
    identity = pf.from_iterable(range(64))
    first = list((identity | pf.shuffle(64)).iterate(seed=5))
    twice = list((identity | pf.shuffle(64) | pf.shuffle(64)).iterate(seed=5))
    assert twice != first and sorted(twice) == list(range(64))


def test_appending_an_operator_keeps_the_upstream_order():
    s = pf.from_iterable(range(30)) | pf.shuffle(30, seed=2)
    assert [x * 10 for x in s] == list(s | pf.map(lambda x: x * 10))


def test_global_random_state_is_untouched():
    import random

    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    list(pf.from_iterable(range(100)) | pf.shuffle(10) | pf.cache(4))
    list((pf.from_iterable(range(100)) | pf.shuffle(10, seed=1)).iterate(seed=2))
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state


@pytest.mark.parametrize(
    "left",
    [np.arange(4), [0, 1, 2, 3], range(4), {0: "a", 1: "b", 2: "c", 3: "d"}.values(), (0, 1, 2, 3)],
    ids=["ndarray", "list", "range", "dict_values", "tuple"],
)
def test_collections_pipe_into_operators(left):
    s = left | pf.map(lambda x: x)
    assert isinstance(s, pf.Stream)
    assert len(list(s)) == 4


def test_ndarray_pipe_is_not_broadcast_by_numpy():
    s = np.arange(3) | pf.map(lambda x: int(x) * 2)
    assert isinstance(s, pf.Stream) and list(s) == [0, 2, 4]
    two_d = np.arange(6).reshape(3, 2) | pf.map(lambda row: row.tolist())
    assert list(two_d) == [[0, 1], [2, 3], [4, 5]]


def test_numpy_scalar_pipe_is_a_type_error():
    with pytest.raises(TypeError):
        np.float64(1.0) | OP


def test_dict_keys_pipe_explains_operators_are_not_iterable():
    with pytest.raises(TypeError, match="from_iterable"):
        {1: 2}.keys() | OP
    with pytest.raises(TypeError, match="not a stream"):
        iter(OP)


def test_stream_pipe_non_operator_says_what_may_follow():
    with pytest.raises(TypeError, match=r"operator such as pf\.map") as info:
        pf.from_iterable([1]) | 3
    assert "3 (int)" in str(info.value)
    with pytest.raises(TypeError):
        pf.from_iterable([1]) | pf.from_iterable([2])


def test_generator_object_pipe_names_pf_stream():
    with pytest.raises(TypeError, match=r"pf\.stream"):
        (x for x in range(3)) | OP


def test_operator_composition_equals_sequential_application():
    a, b, c = pf.map(str), pf.filter(bool), pf.take(2)
    s = pf.from_iterable(range(5))
    assert s | (a | b | c) == s | a | b | c
    assert (a | b) | c == a | (b | c)
    assert list(s | (a | b | c)) == ["0", "1"]
    assert repr(a | b | c) == "map(str) | filter(bool) | take(2)"


def test_operator_call_is_the_same_as_pipe():
    s = pf.from_iterable(range(3))
    assert OP(s) == s | OP
    assert list(OP([1, 2])) == [2, 3]


def test_operator_or_unknown_operand_returns_not_implemented():
    assert OP.__or__(3) is NotImplemented
    assert OP.__ror__(3) is NotImplemented
    with pytest.raises(TypeError):
        OP | 3


def test_pipe_function_matches_operator_syntax():
    s = pf.pipe(range(10), pf.filter(lambda x: x % 2), pf.map(lambda x: x * x))
    assert list(s) == [1, 9, 25, 49, 81]
    assert pf.pipe([1, 2]) == pf.from_iterable([1, 2])


def test_repr_shows_the_pipeline():
    s = pf.from_iterable(range(10)) | pf.map(lambda x: x) | pf.batch(32)
    assert repr(s) == "from_iterable(range(0, 10)) | map(<lambda>) | batch(32)"


class Layers:
    """A callable whose own repr spans lines, as a torch module's does."""

    def __call__(self, x):
        return x

    def __repr__(self):
        return "Layers(\n  (0): Linear()\n  (1): ReLU()\n)"


def test_repr_stays_one_line_with_seed_sequences_and_multi_line_callables():
    seed = np.random.SeedSequence(1).spawn(2)[1]
    sources = [pf.from_iterable("ab"), pf.from_iterable("cd")]
    for mux in (pf.mux(sources, 2, seed=seed), pf.shuffled_mux(sources, seed=seed)):
        assert repr(mux).endswith("seed=SeedSequence(entropy=1, spawn_key=(1,)))")
    s = (
        pf.from_iterable(range(10))
        | pf.map(Layers())
        | pf.shuffle(3, seed=np.random.SeedSequence(5))
        | pf.cache(2, seed=seed)
        | pf.map(lambda x, rng: x, rng=True, seed=seed)
    )
    assert repr(s) == (
        "from_iterable(range(0, 10)) | map(Layers( (0)... (1): ReLU() )) | shuffle(3, "
        "seed=SeedSequence(entropy=5)) | cache(2, prob=0.5, seed=SeedSequence(entropy=1, spawn_key=(1,))) | "
        "map(<lambda>, rng=True, seed=SeedSequence(entropy=1, spawn_key=(1,)))"
    )


def test_cloudpickle_round_trip_with_lambdas_gives_same_items():
    offset = 7
    s = (
        pf.from_iterable(range(100))
        | pf.map(lambda x: {"x": np.full(2, x + offset), "y": x % 3})
        | pf.filter(lambda d: d["y"] != 1)
        | pf.shuffle(16, seed=0)
        | pf.batch(4)
    )
    clone = cloudpickle.loads(cloudpickle.dumps(s))
    assert repr(clone) == repr(s)
    assert same_items(list(clone), list(s))
    assert same_items(list(clone.iterate(seed=3)), list(s.iterate(seed=3)))


def test_plain_pickle_works_without_lambdas():
    s = pf.from_iterable(range(10)) | pf.map(str) | pf.take(3)
    assert list(pickle.loads(pickle.dumps(s))) == ["0", "1", "2"]


def test_nothing_runs_until_the_first_item():
    rec = Recorder(5)
    s = rec.stream() | pf.map(lambda x: x)
    it = s.iterate()
    assert rec.pulled == []
    assert next(it) == 0 and rec.pulled == [1]


def test_iterators_close_their_sources():
    rec = Recorder(None)
    it = iter(rec.stream() | pf.map(lambda x: x) | pf.shuffle(4, seed=0))
    next(it)
    it.close()
    assert rec.closed == 1


def test_iterate_rejects_bad_seeds():
    s = pf.from_iterable([1])
    with pytest.raises(ValueError, match="-3"):
        s.iterate(seed=-3)
    with pytest.raises(TypeError, match="seed"):
        s.iterate(seed="zero")
    assert list(s.iterate(seed=np.random.SeedSequence(1))) == [1]


def test_streams_are_frozen():
    s = pf.from_iterable([1]) | OP
    with pytest.raises(AttributeError):
        s.op = pf.take(0)  # type: ignore[misc]


# ---------------------------------------------------------------- head, len, notebook display


def test_head_returns_the_first_items_and_closes_the_pass():
    rec = Recorder(None)
    s = rec.stream() | pf.map(lambda x: x * 10)
    assert s.head(3) == [0, 10, 20]
    assert rec.pulled == [3] and rec.closed == 1
    assert s.head() == [0, 10, 20, 30, 40]
    assert s.head(0) == [] and rec.pulled == [3, 5]  # nothing opened for no items


def test_head_is_shorter_on_a_short_stream_and_takes_a_pass_seed():
    assert pf.from_iterable("ab").head(5) == ["a", "b"]
    s = pf.from_iterable(range(50)) | pf.shuffle(50)
    assert s.head(10, seed=3) == s.head(10, seed=3) == list(s.iterate(seed=3))[:10]


def test_head_stops_background_workers():
    import multiprocessing

    s = pf.from_iterable(range(10_000)) | pf.map(lambda x: x + 1) | pf.background(workers=2)
    assert s.head(3) == [1, 2, 3]
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize(("n", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_head_checks_n(n, error):
    with pytest.raises(error, match=r"head: n must be an integer >= 0, got"):
        pf.from_iterable([1]).head(n)


def test_len_explains_that_streams_have_no_length():
    s = pf.from_iterable(range(3)) | OP
    with pytest.raises(TypeError, match=r"no length.*s\.head\(n\).*pf\.take\(n\)"):
        len(s)
    # Everything that only asks for a length hint still works, and an empty stream is still truthy.
    assert list(s) == [1, 2, 3] and tuple(s) == (1, 2, 3) and [*s] == [1, 2, 3]
    assert bool(pf.from_iterable([]))


def _parse_stages(markup):
    """The text of each top-level <li> of the first <ol>, and the nesting depth of every <ol>."""
    from html.parser import HTMLParser

    class Stages(HTMLParser):
        def __init__(self):
            super().__init__()
            self.depth, self.stages, self.lists = 0, [], 0

        def handle_starttag(self, tag, attrs):
            if tag in ("ol", "ul"):
                self.depth += 1
                self.lists += 1
            elif tag == "li" and self.depth == 1:
                self.stages.append("")

        def handle_endtag(self, tag):
            if tag in ("ol", "ul"):
                self.depth -= 1

        def handle_data(self, data):
            if self.depth == 1:
                self.stages[-1] += data

    parser = Stages()
    parser.feed(markup)
    parser.close()
    assert parser.depth == 0  # every list closed
    return parser.stages, parser.lists


def test_repr_html_lists_the_stages_source_first_and_repr_stays_one_line():
    s = pf.from_iterable(range(3)) | pf.map(str) | pf.batch(2) | pf.background(workers=2)
    stages, _ = _parse_stages(s._repr_html_())
    assert stages[:3] == ["from_iterable(range(0, 3))", "| map(str)", "| batch(2)"]
    assert re.fullmatch(r"\| background\(workers=2\): (fork|forkserver|spawn) processes", stages[3])
    assert "\n" not in repr(s)


def test_repr_html_shows_a_mux_with_its_sources_and_weights_escaped():
    sources = [pf.from_iterable([i]) | pf.map(str) for i in range(12)]
    s = pf.mux(sources, 3, weights=list(range(1, 13)), seed=0) | pf.take(2)
    markup = s._repr_html_()
    stages, lists = _parse_stages(markup)
    assert stages[0].startswith("mux(<12 streams>, n_active=3") and "weights=[1.0, 2.0" in stages[0]
    assert stages[0].endswith("12 sources, weights 1 to 12 (sum 78)") and "<li>… and 4 more</li>" in markup
    assert stages[-1] == "| take(2)"
    assert lists == 1 + 1 + 8  # the pipeline, the sources, and the 8 sources shown
    assert "&lt;12 streams&gt;" in markup  # repr text is escaped


def test_repr_pretty_lists_the_stages_and_a_mux_sums_up_its_weights():
    class Printer:
        def __init__(self):
            self.out = ""

        def text(self, text):
            self.out += text

    sources = [pf.from_iterable(range(i)) for i in range(10)]
    s = pf.mux(sources, 2, 3, weights=range(1, 11)) | pf.batch(2)
    printer = Printer()
    s._repr_pretty_(printer, False)
    lines = printer.out.splitlines()
    assert lines[0].startswith("mux(") and lines[-1] == "| batch(2)"
    assert lines[1] == "  10 sources, weights 1 to 10 (sum 55):"
    assert lines[2] == "    from_iterable(range(0, 0))" and "… and 2 more" in lines[-2]
    assert "weights 1 to 10 (sum 55)" in s._repr_html_()


def test_head_keeps_the_first_items_of_a_background_intact():
    s = (
        pf.from_iterable(range(60))
        | pf.map(lambda i: np.full(4096, i, np.float32))
        | pf.background(workers=1, ring_bytes=2**18)
    )
    first = s.head(20)
    assert [int(a[0]) for a in first] == list(range(20))
    assert all((a == a[0]).all() for a in first)


# ---------------------------------------------------------------- a newcomer's mistakes, and their fixes


def _no_internal_class(message):
    return not any(name in message for name in ("Applied", "_Map", "_From", "ArrayStream", "_Batch"))


def test_next_on_a_stream_says_how_to_start_a_pass():
    s = pf.from_iterable(range(3)) | pf.map(abs)
    with pytest.raises(TypeError) as caught:
        next(s)
    message = str(caught.value)
    assert "iter(s)" in message and "s.iterate(seed)" in message and "s.head(n)" in message
    assert _no_internal_class(message)
    assert list(s) == [0, 1, 2]  # still a stream, re-iterable


def test_indexing_a_stream_says_how_to_take_items():
    s = pf.from_iterable(range(3)) | pf.map(abs)
    for index in (0, slice(0, 2)):
        with pytest.raises(TypeError) as caught:
            s[index]
        message = str(caught.value)
        assert "s.head(n)" in message and "pf.take(n)" in message and "iter(s)" in message
        assert _no_internal_class(message)


@pytest.mark.parametrize("view", ["items", "keys"])
def test_a_dict_view_piped_into_an_operator_says_how_to_stream_a_dict(view):
    # d.items() | op is a set union in Python: it iterates the operator.
    d = {"a": 1, "b": 2}
    with pytest.raises(TypeError, match=r"pf\.from_iterable\(list\(d\.items\(\)\)\) \| op"):
        getattr(d, view)() | OP
    assert sorted(pf.from_iterable(list(d.items())) | pf.map(lambda kv: kv[0])) == ["a", "b"]


def test_a_stream_is_accepted_where_a_collection_is():
    s = pf.from_iterable(range(3))
    assert list(pf.from_iterable(s)) == [0, 1, 2]


@pytest.mark.parametrize("name", ["shuffle", "batch", "map", "background"])
def test_a_method_chain_as_in_other_libraries_says_operators_go_after_a_pipe(name):
    s = pf.from_iterable(range(3))
    fix = rf"operators are applied with \|, as in s \| pf\.{name}\(\.\.\.\)"
    with pytest.raises(AttributeError, match=fix):
        getattr(s | pf.map(abs), name)
    with pytest.raises(AttributeError) as caught:
        s.no_such_thing  # noqa: B018
    assert _no_internal_class(str(caught.value))
    assert not hasattr(s, "weights") and getattr(s, "weights", None) is None


def test_adding_streams_names_chain_and_the_multiplexers():
    a, b = pf.from_iterable([1]), pf.from_iterable([2])
    with pytest.raises(TypeError, match=r"pf\.chain\(\[a, b\]\)") as caught:
        a + b | pf.map(abs)
    assert _no_internal_class(str(caught.value))
    assert list(pf.chain([a, b])) == [1, 2]


def test_a_stream_has_no_next_for_libraries_that_ask():
    # tqdm.auto and inspect.getmembers ask with hasattr/getattr, which must say "no", not raise.
    tqdm_auto = pytest.importorskip("tqdm.auto")
    s = pf.from_iterable(range(3)) | pf.map(abs)
    assert not hasattr(s, "__next__")
    assert getattr(s, "__next__", None) is None
    assert list(tqdm_auto.tqdm(s, disable=True)) == [0, 1, 2]
    assert "__next__" not in dict(inspect.getmembers(s))


def test_operator_first_sums_and_products_say_what_to_write():
    s = pf.from_iterable(range(3)) | pf.map(abs)
    with pytest.raises(TypeError, match=r"write s \| batch\(3\), not batch\(3\) \| s") as caught:
        pf.batch(3) | s
    assert _no_internal_class(str(caught.value))
    for made in (lambda: sum([s, s]), lambda: 0 + s, lambda: [1] + s):  # noqa: RUF005
        with pytest.raises(TypeError, match=r"pf\.chain\(\[a, b\]\)") as caught:
            made()
        assert _no_internal_class(str(caught.value))
    for made in (lambda: s * 2, lambda: 2 * s):
        with pytest.raises(TypeError, match=r"s \| pf\.cycle\(n\)") as caught:
            made()
        assert _no_internal_class(str(caught.value))
    with pytest.raises(TypeError, match=r"iter\(s\)"):
        s.__next__  # noqa: B018
