"""pescador_fp.keras on the JAX backend (CPU): fit sees every batch of every epoch, epoch e is
iterate(seed=e), evaluate and predict accept the dataset, dict batches become (inputs, targets).

Run by tests/test_keras.py in a pytest process of its own (tests/test_jax.py says why)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import numpy as np
import pytest

import pescador_fp as pf

keras = pytest.importorskip("keras")
pfk = pytest.importorskip("pescador_fp.keras")

pytestmark = pytest.mark.timeout(300)

N, BATCH = 32, 4  # 8 batches a pass


def data():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(N, 3)).astype(np.float32), "y": rng.normal(size=N).astype(np.float32)}


def model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    return m


class Counts(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch = [*getattr(self, "per_epoch", []), 0]

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def recorded(served):
    """A stream of 8 (x, y) batches that records each batch's row ids as keras pulls it."""

    def keep(batch):
        served.append(batch["id"].tolist())
        return batch["x"], batch["y"]

    rows = {**data(), "id": np.arange(N)}
    return pf.from_arrays(rows) | pf.shuffle(N) | pf.batch(BATCH) | pf.map(keep)


def test_the_stream_itself_is_refused_by_keras_but_the_dataset_is_accepted():
    stream = pf.from_arrays(data()) | pf.batch(BATCH) | pf.keras_tuples("x", "y")
    with pytest.raises(ValueError, match="Unrecognized data type"):
        model().fit(stream, epochs=1, verbose=0)
    model().fit(pfk.dataset(stream, steps=8), epochs=1, verbose=0)


def test_fit_sees_every_batch_of_every_epoch_each_epoch_its_own_seed():
    served: list[list[int]] = []
    stream = recorded(served)
    ds = pfk.dataset(stream, steps=8)
    counts = Counts()
    model().fit(ds, epochs=3, verbose=0, callbacks=[counts])
    assert counts.per_epoch == [8, 8, 8]
    expected = []
    for epoch in range(3):
        probe: list[list[int]] = []
        list(recorded(probe).iterate(seed=epoch))
        expected += probe
    assert served[-24:] == expected  # before training, keras may look at a first batch: a pass cut short
    epochs = [served[-24:-16], served[-16:-8], served[-8:]]
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert all(sorted(i for b in epoch for i in b) == list(range(N)) for epoch in epochs)


@pytest.mark.parametrize("steps", [1, 2])
def test_keras_look_at_a_batch_is_no_epoch_even_where_an_epoch_is_one_batch(steps):
    served: list[list[int]] = []
    stream = recorded(served) | pf.take(steps)
    model().fit(pfk.dataset(stream, steps=steps), epochs=3, verbose=0)
    expected = []
    for epoch in range(3):
        probe: list[list[int]] = []
        list((recorded(probe) | pf.take(steps)).iterate(seed=epoch))
        expected += probe
    assert served == [expected[0], *expected]  # the look (a batch of epoch 0), then epochs 0, 1, 2


def test_steps_are_counted_where_the_length_is_known():
    ds = pfk.dataset(pf.from_arrays(data()) | pf.batch(BATCH), inputs="x", outputs="y")
    assert len(ds) == 8
    counts = Counts()
    model().fit(ds, epochs=2, verbose=0, callbacks=[counts])
    assert counts.per_epoch == [8, 8]


def test_evaluate_and_predict_accept_the_dataset():
    ds = pfk.dataset(pf.from_arrays(data()) | pf.batch(BATCH), inputs="x", outputs="y")
    m = model()
    assert np.isfinite(m.evaluate(ds, verbose=0))
    assert m.predict(ds, verbose=0).shape == (N, 1)


def test_an_endless_stream_gives_steps_batches_an_epoch_from_a_fresh_pass():
    served: list[list[int]] = []
    ds = pfk.dataset(recorded(served) | pf.cycle(), steps=5)
    counts = Counts()
    model().fit(ds, epochs=2, verbose=0, callbacks=[counts])
    assert counts.per_epoch == [5, 5]
    assert served[-10] != served[-5]  # epoch 1 starts a pass of its own (seed=1), not batch 6 of epoch 0


def test_a_stream_shorter_than_steps_is_an_error_not_a_short_epoch():
    ds = pfk.dataset(pf.from_arrays(data()) | pf.batch(BATCH) | pf.keras_tuples("x", "y"), steps=10)
    with pytest.raises(pf.PescadorError, match="the stream ended after 8 batches of epoch 0, but steps=10"):
        model().fit(ds, epochs=1, verbose=0)


def test_building_checks_steps_and_unknown_lengths():
    unknown = pf.from_arrays(data()) | pf.filter(lambda d: True) | pf.batch(BATCH)
    with pytest.raises(ValueError, match=r"cannot be known in advance; give steps=N"):
        pfk.dataset(unknown)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        pfk.dataset(unknown, steps=0)
    with pytest.raises(TypeError, match="steps"):
        pfk.dataset(unknown, steps=2.5)
    with pytest.raises(ValueError, match="has no batch"):
        pfk.dataset(pf.from_iterable([]))


def test_set_epoch_chooses_the_next_pass():
    ds = pfk.dataset(recorded([]) | pf.map(lambda t: t[1]), steps=8)
    ds.set_epoch(5)
    first = ds[0]
    assert np.array_equal(first, next(iter((recorded([]) | pf.map(lambda t: t[1])).iterate(seed=5))))


def test_the_training_page_examples_run():
    """docs/training.md runs as written, in one namespace as a reader's session would (not torchrun's)."""
    import doctest
    import re
    from pathlib import Path

    pytest.importorskip("torch")
    page = Path(__file__).resolve().parent.parent / "docs" / "training.md"
    blocks = re.findall(r"(?<!-->\n)```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    exec("import numpy as np\nimport pescador_fp as pf", namespace)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for index, block in enumerate(blocks):
        name = f"docs/training.md block {index}"
        if ">>>" not in block:
            exec(compile(block, name, "exec"), namespace)
            continue
        runner.run(
            doctest.DocTestParser().get_doctest(block, namespace, name, str(page), 0), clear_globs=False
        )
    assert runner.failures == 0, "an example in docs/training.md failed; pytest -s shows the doctest report"
