"""The demo: ``python -m pescador_fp``.

Writes a small synthetic dataset of ``.npy`` files to a temporary folder and
streams it for a few epochs: a ``mux`` over one source per file (a bounded
working set of open files, every row once per epoch), then ``shuffle | map |
batch``, all of it in ``background`` worker processes. Shows progress with
``pf.progress`` (where tqdm is installed: ``pip install "pescador_fp[progress]"``),
and prints what it did and how fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import pescador_fp as pf


def write_dataset(folder: Path, files: int, rows: int, dim: int, classes: int, seed: int) -> list[Path]:
    """Write ``files`` pairs of ``.npy`` files (features, labels); return the feature paths."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(classes, dim)).astype(np.float32)
    paths = []
    for i in range(files):
        labels = rng.integers(0, classes, size=rows)
        features = centers[labels] + rng.normal(size=(rows, dim)).astype(np.float32)
        path = folder / f"part-{i:04d}.x.npy"
        np.save(path, features)
        np.save(folder / f"part-{i:04d}.y.npy", labels)
        paths.append(path)
    return paths


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Yield ``{"x": features, "y": label}`` for every row of one file, memory-mapped."""
    features = np.load(path, mmap_mode="r")
    labels = np.load(str(path).replace(".x.npy", ".y.npy"))
    yield from pf.from_arrays({"x": features, "y": labels})


def standardize(sample: dict[str, Any]) -> dict[str, Any]:
    """Scale the features to unit norm (the per-sample 'augmentation' of the demo)."""
    x = sample["x"]
    return {"x": x / np.float32(np.linalg.norm(x) + 1e-6), "y": sample["y"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pescador_fp", description=__doc__)
    parser.add_argument("--files", type=int, default=32, help="number of files to write (default 32)")
    parser.add_argument("--rows", type=int, default=2000, help="samples per file (default 2000)")
    parser.add_argument("--dim", type=int, default=64, help="features per sample (default 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the data (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and pipeline (default 0)")
    parser.add_argument("--n-active", type=int, default=8, help="files open at once (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="background worker processes (default 2)")
    args = parser.parse_args(argv)
    classes = 10

    with tempfile.TemporaryDirectory(prefix="pescador_fp-demo-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = write_dataset(folder, args.files, args.rows, args.dim, classes, args.seed)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(
            f"wrote {2 * len(paths)} .npy files ({size / 2**20:.1f} MiB) to {folder} "
            f"in {time.perf_counter() - t0:.2f} s"
        )

        files = [pf.stream(read_rows, path) for path in paths]
        n_active = min(args.n_active, len(files))
        train = (
            pf.mux(files, n_active=n_active, mode="exhaustive", seed=args.seed)  # each row once per epoch
            | pf.shuffle(4096, seed=args.seed)
            | pf.map(standardize)
            | pf.batch(args.batch_size)
            | pf.background(workers=args.workers)
        )
        print(f"pipeline: {train!r}")
        print(
            f"{len(files)} files, at most {n_active} open at once; {args.workers} worker processes, "
            f"each with its share of the files"
        )

        # As many as without background: the workers' leftover samples are batched at the end.
        batches_per_epoch = args.files * args.rows // args.batch_size
        shown = importlib.util.find_spec("tqdm") is not None
        if not shown:
            print('(no progress bar: pip install "pescador_fp[progress]" to see one)')
        done = batches = 0
        first_labels = []
        counts = np.zeros(classes, dtype=np.int64)
        start = time.perf_counter()
        last = None
        for epoch in range(args.epochs):
            label = f"epoch {epoch + 1}/{args.epochs}"
            epoch_stream = train | pf.progress(batches_per_epoch, desc=label) if shown else train
            last = epoch_stream.iterate(seed=epoch)
            for i, b in enumerate(last):
                if i == 0:
                    first_labels.append(b["y"][:8].tolist())
                counts += np.bincount(b["y"], minlength=classes)
                done += len(b["y"])
                batches += 1
        elapsed = time.perf_counter() - start
        stats = last.stats() if last is not None else None
        resumed = resume_check(train, batches_per_epoch // 2)

    sample_bytes = args.dim * 4 + 8
    print(
        f"streamed {done:,} samples in {batches:,} batches of {args.batch_size} over "
        f"{args.epochs} epochs in {elapsed:.2f} s"
    )
    print(f"throughput: {done / elapsed:,.0f} samples/s, {done * sample_bytes / elapsed / 2**20:,.1f} MiB/s")
    print(f"label counts: {counts.tolist()}")
    if len(first_labels) > 1:
        same = all(labels == first_labels[0] for labels in first_labels[1:])
        print(
            f"first labels of each epoch: {first_labels} "
            f"({'same order' if same else 'a new, reproducible order each epoch'})"
        )
    print(resumed)
    if stats is not None:
        print(f"\nwhere the last epoch's time went (it.stats()):\n{stats}")
    return 0


def resume_check(train: pf.Stream[Any], cut: int) -> str:
    """Stop epoch 1 after ``cut`` batches, save where it stood as JSON, resume: the same rest?"""
    run = train.iterate(seed=0)
    first = [b["y"] for _, b in zip(range(cut), run)]
    saved = json.dumps(run.state())
    run.close()
    start = time.perf_counter()
    rest = [b["y"] for b in train.iterate(seed=0, state=json.loads(saved))]
    seconds = time.perf_counter() - start
    whole = [b["y"] for b in train.iterate(seed=0)]
    same = len(first) + len(rest) == len(whole) and all(map(np.array_equal, first + rest, whole))
    return (
        f"epoch 1 stopped after {cut} batches, its state saved ({len(saved)} bytes of JSON) and resumed: "
        f"the other {len(rest)} batches in {seconds:.2f} s, "
        f"{'the same as an uninterrupted pass' if same else 'NOT the same as an uninterrupted pass'}"
    )


if __name__ == "__main__":
    sys.exit(main())
