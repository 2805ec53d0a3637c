"""Pescador-style workflows run on ``pescador_fp.compat``: each test is a small program a Pescador
user would write (streamers, muxes, batches, epochs, Keras-style tuples, background generation),
using nothing but ``import pescador_fp.compat as pescador`` and numpy."""

from __future__ import annotations

import numpy as np

import pescador_fp.compat as pescador

# ---------------------------------------------------------------- a generator, batches, a training loop


def regression_samples(w_true, noise, seed):
    """An endless supply of (features, target) pairs for y = x . w_true + noise."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.normal(size=len(w_true))
        yield {"X": x, "Y": np.array(x @ w_true + noise * rng.normal())}


def test_sgd_on_buffered_batches():
    w_true = np.array([2.0, -1.0, 0.5])
    samples = pescador.Streamer(regression_samples, w_true, noise=0.01, seed=3)
    batches = pescador.buffer_stream(samples, 16)

    w = np.zeros(3)
    for _, batch in zip(range(300), batches):
        assert batch["X"].shape == (16, 3) and batch["Y"].shape == (16,)
        gradient = batch["X"].T @ (batch["X"] @ w - batch["Y"]) / 16
        w -= 0.1 * gradient
    assert np.allclose(w, w_true, atol=0.05), w


def test_tuples_feed_a_partial_fit_style_model():
    class RunningMean:  # stands in for an estimator with partial_fit(X, y)
        def __init__(self):
            self.n, self.total = 0, 0.0

        def partial_fit(self, X, y):
            assert X.ndim == 2 and y.ndim == 1 and len(X) == len(y)
            self.n += len(y)
            self.total += float(y.sum())

    def labelled(n):
        for i in range(n):
            yield {"X": np.full(4, i, dtype=np.float32), "y": np.array(i % 2)}

    model = RunningMean()
    for X, y in pescador.tuples(
        pescador.buffer_stream(pescador.Streamer(labelled, 50), 8, partial=True), "X", "y"
    ):
        model.partial_fit(X, y)
    assert model.n == 50  # the partial last batch is kept
    assert model.total == 25


# ---------------------------------------------------------------- epochs


def test_epochs_see_every_sample_once():
    def shuffled_indices(n):
        yield from np.random.default_rng().permutation(n).tolist()  # a new order at each pass

    dataset = pescador.Streamer(shuffled_indices, 40)
    orders = []
    for _ in range(3):
        epoch = list(dataset.iterate())
        assert sorted(epoch) == list(range(40))
        orders.append(epoch)
    assert orders[0] != orders[1] or orders[1] != orders[2]

    assert len(list(dataset.iterate(max_iter=10))) == 10  # a short validation epoch
    assert len(list(dataset(max_iter=10))) == 10

    long_run = list(dataset.cycle(max_iter=100))  # 2.5 epochs, restarting the generator
    counts = np.bincount(long_run, minlength=40)
    assert len(long_run) == 100 and set(counts.tolist()) == {2, 3} and counts.sum() == 100
    assert sorted(long_run[:40]) == sorted(long_run[40:80]) == list(range(40))
    assert len(list(dataset(max_iter=90, cycle=True))) == 90


# ---------------------------------------------------------------- many files, a bounded working set


FILES = {f"track{i:02d}.npy": np.arange(10 * i, 10 * i + 10).reshape(10, 1) for i in range(12)}


def read_rows(name, status):
    """Stream one "file" forever from a random row; ``status`` counts how many are open at once."""
    rows = FILES[name]
    status["open"] += 1
    status["peak"] = max(status["peak"], status["open"])
    try:
        i = int(np.random.default_rng().integers(len(rows)))
        while True:
            yield {"row": rows[i], "file": np.array(int(name[5:7]))}
            i = (i + 1) % len(rows)
    finally:
        status["open"] -= 1


def test_stochastic_mux_keeps_a_few_files_open():
    status = {"open": 0, "peak": 0}
    streams = [pescador.Streamer(read_rows, name, status) for name in sorted(FILES)]
    mux = pescador.StochasticMux(streams, n_active=4, rate=16, random_state=0)

    files = np.array([int(item["file"]) for item in mux(max_iter=24_000)])
    assert status["peak"] <= 4
    assert status["open"] == 0  # every activation was closed when the pass ended
    shares = np.bincount(files, minlength=12) / len(files)
    assert np.allclose(shares, 1 / 12, atol=0.03), shares


def test_exhaustive_mux_is_one_epoch_over_all_files():
    def read_file(name):
        yield from FILES[name]

    streams = [pescador.Streamer(read_file, name) for name in sorted(FILES)]
    epoch = pescador.StochasticMux(streams, n_active=3, rate=None, mode="exhaustive")
    for _ in range(2):
        rows = [int(r[0]) for r in epoch]
        assert sorted(rows) == list(range(120))  # every row of every file, once


def test_nested_muxes_sample_groups_by_weight():
    def voice(name):
        while True:
            yield name

    speech = pescador.StochasticMux([pescador.Streamer(voice, s) for s in ("ann", "bo", "cy")], 2, rate=8)
    noise = pescador.StochasticMux([pescador.Streamer(voice, s) for s in ("hum", "hiss")], 1, rate=8)
    train = pescador.StochasticMux([speech, noise], 1, rate=16, weights=[3, 1], random_state=2)

    out = list(train(max_iter=30_000))
    speech_share = sum(x in ("ann", "bo", "cy") for x in out) / len(out)
    assert abs(speech_share - 0.75) < 0.05, speech_share  # standard deviation over seeds: 0.013
    assert {"ann", "bo", "cy", "hum", "hiss"} == set(out)


def test_random_patches_from_spectrograms():
    rng = np.random.default_rng(0)
    spectrograms = [rng.normal(size=(40 + 10 * k, 12)).astype(np.float32) for k in range(4)]

    def patches(track, width):
        spec = spectrograms[track]
        local = np.random.default_rng()
        while True:
            start = int(local.integers(len(spec) - width + 1))
            yield {"X": spec[start : start + width][np.newaxis], "Y": np.array([track])}

    streams = [pescador.Streamer(patches, k, 16) for k in range(4)]
    batches = pescador.buffer_stream(pescador.StochasticMux(streams, n_active=2, rate=4), 8, axis=0)
    for _ in range(20):
        batch = next(batches)
        assert batch["X"].shape == (8, 16, 12) and batch["X"].dtype == np.float32
        assert batch["Y"].shape == (8,) and set(batch["Y"].tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------- chains, round robin, shuffled mux


def test_chain_runs_a_curriculum_in_order():
    def level(difficulty, n):
        for i in range(n):
            yield (difficulty, i)

    curriculum = pescador.ChainMux([pescador.Streamer(level, d, 5) for d in ("easy", "medium", "hard")])
    seen = [d for d, _ in curriculum]
    assert seen == ["easy"] * 5 + ["medium"] * 5 + ["hard"] * 5

    again = pescador.ChainMux([pescador.Streamer(level, "drill", 3)], mode="cycle")
    assert [i for _, i in again(max_iter=8)] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_chain_over_a_lazy_list_of_shards():
    opened = []

    def shards(count):
        for k in range(count):
            opened.append(k)
            yield pescador.Streamer(range(10 * k, 10 * k + 3))

    out = pescador.ChainMux(pescador.Streamer(shards, 3))
    assert list(out) == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert list(out) == [0, 1, 2, 10, 11, 12, 20, 21, 22]  # every pass runs through all shards again
    assert opened == [0, 1, 2]  # the shard list is read once, when the mux is built, as in Pescador


def test_round_robin_takes_turns():
    speakers = [
        pescador.Streamer(["a1", "a2"]),
        pescador.Streamer(["b1", "b2", "b3"]),
        pescador.Streamer(["c1"]),
    ]
    assert list(pescador.RoundRobinMux(speakers)) == ["a1", "b1", "c1", "a2", "b2", "b3"]
    rounds = list(pescador.RoundRobinMux(speakers, mode="permuted_cycle", random_state=1)(max_iter=60))
    assert len(rounds) == 60 and sorted(set(rounds)) == ["a1", "a2", "b1", "b2", "b3", "c1"]


def test_shuffled_mux_balances_classes():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(100, 2))
    labels = np.array([1] * 5 + [0] * 95)

    def from_class(c):
        members = np.flatnonzero(labels == c)
        pick = np.random.default_rng()
        while True:
            i = int(pick.choice(members))
            yield {"X": features[i], "Y": np.array(labels[i])}

    by_class = [pescador.Streamer(from_class, c) for c in (0, 1)]
    balanced = pescador.buffer_stream(pescador.ShuffledMux(by_class, random_state=0), 50)
    positives = [float(next(balanced)["Y"].mean()) for _ in range(100)]
    assert abs(np.mean(positives) - 0.5) < 0.03

    skewed = pescador.ShuffledMux(by_class, weights=[0.8, 0.2], random_state=0)
    ys = np.array([int(item["Y"]) for item in skewed(max_iter=3000)])
    assert abs(ys.mean() - 0.2) < 0.03


# ---------------------------------------------------------------- Keras-style fit, cache, background


def fake_fit(generator, steps_per_epoch, epochs):
    """A stand-in for keras Model.fit over a generator of (x, y) batches; returns the loss per epoch."""
    history = []
    for _ in range(epochs):
        losses = []
        for _ in range(steps_per_epoch):
            (images, extra), y = next(generator)
            assert images.shape == (16, 8, 8, 1) and extra.shape == (16, 3) and y.shape == (16, 1)
            losses.append(float(np.mean((images.mean(axis=(1, 2, 3)) + extra.sum(axis=1) - y[:, 0]) ** 2)))
        history.append(float(np.mean(losses)))
    return history


def test_keras_tuples_feed_a_fit_loop():
    def examples(label):
        rng = np.random.default_rng(label)
        while True:
            yield {
                "image": rng.random((8, 8, 1)).astype(np.float32),
                "extra": np.full(3, label, dtype=np.float32),
                "label": np.array([3.0 * label], dtype=np.float32),
            }

    mux = pescador.ShuffledMux([pescador.Streamer(examples, k) for k in range(3)], random_state=0)
    batches = pescador.buffer_stream(mux, 16)
    history = fake_fit(pescador.keras_tuples(batches, inputs=["image", "extra"], outputs="label"), 10, 3)
    assert len(history) == 3
    assert all(0.1 < loss < 0.5 for loss in history)  # images average about 0.5: loss about 0.25

    single = next(pescador.keras_tuples(pescador.buffer_stream(mux, 4), inputs="image", outputs="label"))
    assert single[0].shape == (4, 8, 8, 1) and single[1].shape == (4, 1)
    unsupervised = next(pescador.keras_tuples(pescador.buffer_stream(mux, 4), inputs="image"))
    assert unsupervised[1] is None


def test_cache_reuses_costly_items():
    loads = []

    def load_expensive(n):
        for i in range(n):
            loads.append(i)
            yield {"i": np.array(i)}

    cached = pescador.cache(load_expensive(1000), n_cache=8, prob=0.25, random_state=4)
    served = [item for _, item in zip(range(400), cached)]
    assert [int(x["i"]) for x in served[:8]] == list(range(8))  # the cache warms up in order
    assert len(served) == 400
    assert len(loads) < 160  # about 8 + 392 / 4 loads served 400 items


def test_zmq_streamer_generates_in_the_background():
    def clip(speaker):
        rng = np.random.default_rng(speaker)
        while True:
            yield {"audio": rng.normal(size=32).astype(np.float32), "speaker": np.array(speaker)}

    mux = pescador.StochasticMux([pescador.Streamer(clip, k) for k in range(5)], 2, rate=8, random_state=0)
    background = pescador.ZMQStreamer(mux)

    seen = [int(item["speaker"]) for item in background.iterate(max_iter=200)]
    assert len(seen) == 200 and set(seen) <= set(range(5))
    assert seen == [int(item["speaker"]) for item in mux.iterate(max_iter=200)]  # same seeded stream

    batches = list(pescador.buffer_stream(background(max_iter=64), 16))
    assert len(batches) == 4
    for batch in batches:
        assert batch["audio"].shape == (16, 32) and batch["speaker"].shape == (16,)
