"""pescador_fp side by side with Grain, torch DataLoader and torchdata.nodes on one pipeline.

Run (from the repository root):  python benchmarks/bench_peers.py [--rounds 3] [--quick]
(the peers and matplotlib come with ``pip install -e ".[bench]"``)

The pipeline, at three batch sizes (64 rows a batch):

    pf.from_arrays(d) | pf.shuffle(1024) | pf.map(lambda x: x + 1) | pf.batch(64) | pf.background(workers=2)

- tokens:   int32 rows of 512          (128 KiB a batch)
- features: float32 rows of 4096       (1 MiB a batch)
- images:   uint8 rows of 224x224x3    (9.2 MiB a batch)

and its equivalent in each peer, each used as its documentation recommends:

- Grain 0.2.18, ``MapDataset``: ``source(d).shuffle(seed)`` (a global shuffle)
  ``.map(f).to_iter_dataset(ReadOptions(num_threads=0)).batch(64).mp_prefetch(2 workers)``;
  ``num_threads=0`` is what ``ReadOptions`` recommends for data already in memory.
- Grain 0.2.18, ``IterDataset``: the same with ``WindowShuffleIterDataset(window_size=1024)``
  after ``to_iter_dataset`` instead of the global shuffle (the nearest to ``pf.shuffle(1024)``).
- torch ``DataLoader(Rows(d), batch_size=64, shuffle=True, num_workers=2)``: a map-style
  ``Dataset`` whose ``__getitem__`` returns ``d[i] + 1``; the default collate stacks in the workers.
- torchdata.nodes 0.11.0, as its guide "Migrating to torchdata.nodes from torch.utils.data" does it:
  ``SamplerWrapper(RandomSampler) | Batcher(64) | ParallelMapper(fetch, +1 and collate,
  num_workers=2, method="process") | Prefetcher(4) | Loader``.

Each measurement runs in a fresh process (this script, run with ``--child``), which makes
the data in memory from one seed (the same rows for every library), opens the pipeline,
and records: the time to the first batch (opening included, data making not), then after
a few warm-up batches, batches/s over about ``--target-s`` seconds (or until the data runs
low), the consumer thread's CPU per batch (``time.thread_time`` around each
``batch = next(it)``, which also drops the previous batch, as a ``for`` loop does; other
threads of the consumer's process are not counted there) and the whole consumer process's
CPU per batch (``time.process_time``, its helper threads included, its workers not).
Rounds are interleaved (round, then size, then library, the library order rotated each
round) and each figure is reported as min / median / max over the rounds; the table gives
ratios of medians against the best peer.

The data is capped at ``--max-gib`` per measurement (every library gets the same rows):
at image-sized batches that caps a measurement at about 160 batches.

BLAS/OpenMP thread pools are pinned to one thread in every process, before numpy is imported.
"""

from __future__ import annotations

import os

for _variable in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _timing import spread, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # measure this checkout's pescador_fp, installed or not
    sys.path.insert(1, str(ROOT))

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BATCH = 64
WORKERS = 2
SHUFFLE_BUFFER = 1024
SEED = 0
# Batches short of the data's end where a measurement stops: the workers' last, partial
# batches and the end of the pass are no part of the steady state.
END_MARGIN = 2 * WORKERS + 2
# Rows of fresh random data; the rest of the data repeats them (still far larger than any cache).
RANDOM_BYTES = 64 * MIB
_CHILD_TIMEOUT_S = 300.0
BENCH_EXTRA = 'pip install -e ".[bench]"'

# name: (dtype, row shape, what it stands for)
SIZES: dict[str, tuple[str, tuple[int, ...], str]] = {
    "128KiB": ("int32", (512,), "tokens"),
    "1MiB": ("float32", (4096,), "features"),
    "9MiB": ("uint8", (224, 224, 3), "images 224x224x3"),
}


def batch_bytes(size: str) -> int:
    dtype, shape, _ = SIZES[size]
    return BATCH * int(np.prod(shape)) * np.dtype(dtype).itemsize


def size_label(size: str) -> str:
    nbytes = batch_bytes(size)
    amount = f"{nbytes / MIB:.1f} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"
    return f"{amount.replace('.0 MiB', ' MiB')} ({SIZES[size][2].split()[0]})"


def make_data(size: str, max_bytes: int, seed: int) -> np.ndarray:
    """The rows of one measurement: the same for every library, from ``seed``."""
    dtype, shape, _ = SIZES[size]
    row_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    rows = max(BATCH * 8, max_bytes // row_bytes)
    fresh = min(rows, max(BATCH, RANDOM_BYTES // row_bytes))
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        block = rng.random((fresh, *shape), dtype=np.float32)
    else:
        block = rng.integers(0, 100, (fresh, *shape), dtype=dtype)
    return np.resize(block, (rows, *shape))  # repeats the block: one copy at memcpy speed


# ---------------------------------------------------------------- the pipelines (module level: fork)


def add_one(x: Any) -> Any:
    return x + 1


def open_pescador_fp(data: np.ndarray, seed: int) -> Iterator[Any]:
    import pescador_fp as pf

    stream = (
        pf.from_arrays(data)
        | pf.shuffle(SHUFFLE_BUFFER, seed=seed)
        | pf.map(lambda x: x + 1)
        | pf.batch(BATCH)
        | pf.background(workers=WORKERS)
    )
    return iter(stream)


def grain_module() -> Any:
    """Grain, its absl flags marked parsed (with their defaults), as ``absl.app.run`` leaves them:
    ``mp_prefetch`` reads a flag and raises ``UnparsedFlagAccessError`` outside an absl app."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def open_grain_map(data: np.ndarray, seed: int) -> Iterator[Any]:
    grain = grain_module()

    dataset = (
        grain.MapDataset.source(data)
        .shuffle(seed=seed)
        .map(lambda x: x + 1)
        .to_iter_dataset(grain.ReadOptions(num_threads=0))
        .batch(BATCH, drop_remainder=True)
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=WORKERS))
    )
    return iter(dataset)


def open_grain_iter(data: np.ndarray, seed: int) -> Iterator[Any]:
    grain = grain_module()

    rows = grain.MapDataset.source(data).to_iter_dataset(grain.ReadOptions(num_threads=0))
    dataset = (
        grain.experimental.WindowShuffleIterDataset(rows, window_size=SHUFFLE_BUFFER, seed=seed)
        .map(lambda x: x + 1)
        .batch(BATCH, drop_remainder=True)
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=WORKERS))
    )
    return iter(dataset)


class Rows:
    """A map-style dataset over the rows of an array, mapped by ``x + 1`` (a torch Dataset when made)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> np.ndarray:
        return add_one(self.data[i])


def open_torch(data: np.ndarray, seed: int) -> Iterator[Any]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    dataset = type("RowsDataset", (Rows, Dataset), {})(data)
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=WORKERS,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


class FetchAndCollate:
    """torchdata.nodes' map function: a batch of indices to a collated batch (in a worker)."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows

    def __call__(self, indices: list[int]) -> Any:
        from torch.utils.data import default_collate

        return default_collate([self.rows[i] for i in indices])


def open_torchdata(data: np.ndarray, seed: int) -> Iterator[Any]:
    import torch
    import torchdata.nodes as tn
    from torch.utils.data import RandomSampler

    rows = Rows(data)
    node: Any = tn.SamplerWrapper(RandomSampler(rows, generator=torch.Generator().manual_seed(seed)))
    node = tn.Batcher(node, batch_size=BATCH, drop_last=True)
    node = tn.ParallelMapper(
        node, map_fn=FetchAndCollate(rows), num_workers=WORKERS, method="process", in_order=True
    )
    node = tn.Prefetcher(node, prefetch_factor=2 * WORKERS)
    return iter(tn.Loader(node))


# name: (label, opener, modules it needs)
LIBRARIES: dict[str, tuple[str, Callable[[np.ndarray, int], Iterator[Any]], tuple[str, ...]]] = {
    "pescador_fp": ("pescador_fp", open_pescador_fp, ()),
    "grain_map": ("Grain MapDataset", open_grain_map, ("grain",)),
    "grain_iter": ("Grain IterDataset", open_grain_iter, ("grain",)),
    "torch": ("torch DataLoader", open_torch, ("torch",)),
    "torchdata": ("torchdata.nodes", open_torchdata, ("torch", "torchdata")),
}
OURS = "pescador_fp"


# ---------------------------------------------------------------- one measurement (the child)


def check_batch(batch: Any, data: np.ndarray) -> None:
    """A batch must hold 64 rows of the data, each plus one."""
    array = np.asarray(batch)
    expected = (BATCH, *data.shape[1:])
    assert array.shape == expected and array.dtype == data.dtype, (array.shape, array.dtype)
    heads = data.reshape(len(data), -1)[:, :16]
    for row in (array[0], array[-1]):
        head = (row.reshape(-1)[:16] - 1).astype(data.dtype)
        same = np.isclose(heads, head, rtol=0, atol=1e-6) if data.dtype.kind == "f" else heads == head
        assert same.all(axis=1).any(), "a batch row is not a row of the data plus one"


def close(items: Iterator[Any]) -> None:
    closer = getattr(items, "close", None)
    if closer is not None:
        closer()


def measure(library: str, size: str, target_s: float, max_bytes: int, warmup: int) -> dict[str, Any]:
    """Open ``library``'s pipeline on fresh data; time its first batch and its steady state."""
    data = make_data(size, max_bytes, SEED)
    available = len(data) // BATCH - warmup - END_MARGIN
    opener = LIBRARIES[library][1]
    start = time.perf_counter()
    items = opener(data, SEED)
    first = next(items)
    first_s = time.perf_counter() - start
    check_batch(first, data)
    del first
    for _ in range(warmup):
        next(items)
    consumer_cpu = 0.0
    count = 0
    process_before = time.process_time()
    start = time.perf_counter()
    while count < available:
        before = time.thread_time()
        batch = next(items)  # also drops the previous batch, as a for loop does
        consumer_cpu += time.thread_time() - before
        count += 1
        if time.perf_counter() - start >= target_s:
            break
    elapsed = time.perf_counter() - start
    process_cpu = time.process_time() - process_before
    del batch
    close(items)
    return {
        "library": library,
        "size": size,
        "batches": count,
        "seconds": elapsed,
        "batches_per_s": count / elapsed,
        "consumer_cpu_us": consumer_cpu / count * 1e6,
        "process_cpu_us": process_cpu / count * 1e6,
        "first_batch_s": first_s,
        "data_bytes": int(data.nbytes),
    }


# ---------------------------------------------------------------- the rounds (the parent)


def missing_modules(libraries: list[str]) -> list[str]:
    needed = {module for name in libraries for module in LIBRARIES[name][2]} | {"matplotlib"}
    return sorted(module for module in needed if importlib.util.find_spec(module) is None)


def run_child(library: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh process; its result, or ``{"error": why}``."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        library,
        size,
        "--target-s",
        str(args.target_s),
        "--max-gib",
        str(args.max_gib),
        "--warmup",
        str(args.warmup),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {_CHILD_TIMEOUT_S:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"error": f"exit status {done.returncode}: {last}"}
    return dict(json.loads(lines[-1]))


def run_rounds(args: argparse.Namespace) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, str]]:
    """Every (size, library) measured once a round; rounds, then sizes, then libraries in turn."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        size: {name: [] for name in args.libraries} for size in args.sizes
    }
    skipped: dict[str, str] = {}
    for round_index in range(args.rounds):
        shift = round_index % len(args.libraries)
        order = args.libraries[shift:] + args.libraries[:shift]
        for size in args.sizes:
            for library in order:
                if library in skipped:
                    continue
                result = run_child(library, size, args)
                if "error" in result:
                    skipped[library] = f"{size_label(size)}, round {round_index + 1}: {result['error']}"
                    print(f"  SKIPPED {LIBRARIES[library][0]}: {skipped[library]}", flush=True)
                    continue
                results[size][library].append(result)
                print(
                    f"  round {round_index + 1} {size:>6} {LIBRARIES[library][0]:<18} "
                    f"{result['batches_per_s']:9.1f} batches/s over {result['batches']:5d} "
                    f"({result['seconds']:.2f} s), consumer {result['consumer_cpu_us']:8.1f} us/batch, "
                    f"process {result['process_cpu_us']:8.1f} us/batch, "
                    f"first batch {result['first_batch_s'] * 1e3:7.1f} ms",
                    flush=True,
                )
    return results, skipped


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        key: spread([run[key] for run in runs])
        for key in ("batches_per_s", "consumer_cpu_us", "process_cpu_us", "first_batch_s")
    }


def summaries(
    results: dict[str, dict[str, list[dict[str, Any]]]], skipped: dict[str, str]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    return {
        size: {name: summarize(runs) for name, runs in by_library.items() if runs and name not in skipped}
        for size, by_library in results.items()
    }


def best_peer(by_library: dict[str, dict[str, dict[str, float]]]) -> str | None:
    peers = [name for name in by_library if name != OURS]
    return max(peers, key=lambda name: by_library[name]["batches_per_s"]["median"], default=None)


def number(value: float) -> str:
    """``value`` rounded, thousands apart by a space (6 681), as the docs write them."""
    return f"{value:,.0f}".replace(",", " ")


def markdown_table(table: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    lines = [
        "| batch | library | batches/s: median (min-max) | x best peer | "
        "consumer thread CPU µs/batch: median (min-max) | process CPU µs/batch | first batch ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, by_library in table.items():
        best = best_peer(by_library)
        for name, s in by_library.items():
            rate, cpu = s["batches_per_s"], s["consumer_cpu_us"]
            ratio = rate["median"] / by_library[best]["batches_per_s"]["median"] if best else float("nan")
            label = LIBRARIES[name][0] + (" (best peer)" if name == best else "")
            lines.append(
                f"| {size_label(size)} | {label} | {number(rate['median'])} ({number(rate['min'])}-"
                f"{number(rate['max'])}) | {ratio:.2f}x | {number(cpu['median'])} ({number(cpu['min'])}-"
                f"{number(cpu['max'])}) | {number(s['process_cpu_us']['median'])} | "
                f"{number(s['first_batch_s']['median'] * 1e3)} |"
            )
    return "\n".join(lines)


def goals(table: dict[str, dict[str, dict[str, dict[str, float]]]]) -> list[str]:
    """DESIGN.md section 4's goals for this benchmark, each MET or NOT MET."""
    lines = []
    for size, by_library in table.items():
        if OURS not in by_library:
            continue
        ours = by_library[OURS]
        cpu = ours["consumer_cpu_us"]["median"]
        lines.append(
            f"- {size_label(size)}: consumer CPU {number(cpu)} µs/batch (goal ≤ 20): "
            f"{'MET' if cpu <= 20 else 'NOT MET'}"
        )
        best = best_peer(by_library)
        if best is None:
            continue
        ratio = ours["batches_per_s"]["median"] / by_library[best]["batches_per_s"]["median"]
        target = 1.5 if size == "9MiB" else 4.0
        which = "every peer" if size == "9MiB" else "the best peer"
        lines.append(
            f"- {size_label(size)}: {ratio:.2f}x {LIBRARIES[best][0]}'s batches/s "
            f"(goal ≥ {target:g}x {which}): {'MET' if ratio >= target else 'NOT MET'}"
        )
    return lines


def plot(table: dict[str, dict[str, dict[str, dict[str, float]]]], path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(table)
    names = [name for name in LIBRARIES if any(name in table[size] for size in sizes)]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.8 / len(names)
    panels = (
        ("batches_per_s", "batches/s (log scale; higher is better)", None),
        ("consumer_cpu_us", "consumer thread CPU per batch, µs (log; lower is better)", 20.0),
    )
    for axis, (key, title, goal) in zip(axes, panels):
        for k, name in enumerate(names):
            xs, medians, low, high = [], [], [], []
            for i, size in enumerate(sizes):
                if name not in table[size]:
                    continue
                s = table[size][name][key]
                xs.append(i + (k - (len(names) - 1) / 2) * width)
                medians.append(s["median"])
                low.append(s["median"] - s["min"])
                high.append(s["max"] - s["median"])
            axis.bar(xs, medians, width, yerr=[low, high], capsize=2, label=LIBRARIES[name][0])
        if goal is not None:
            line = axis.axhline(goal, color="black", linestyle="--", linewidth=1, label=f"goal ≤ {goal:g} µs")
            axis.legend(handles=[line], fontsize=8, loc="upper left")
        axis.set_yscale("log")
        axis.set_xticks(range(len(sizes)), [size_label(size) for size in sizes])
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"pipeline from_arrays | shuffle(1024) | map(x + 1) | batch(64) | 2 worker processes\n{note}",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run: less data, shorter measurements")
    parser.add_argument("--target-s", type=float, default=None, help="seconds a measurement lasts at most")
    parser.add_argument("--max-gib", type=float, default=None, help="data per measurement, GiB")
    parser.add_argument("--warmup", type=int, default=None, help="batches before the rate is timed")
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "peers.png"), help="PNG to write")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--from-json", help="measure nothing: the table and plot of a --json file")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    args.target_s = args.target_s if args.target_s is not None else (0.3 if args.quick else 2.0)
    args.max_gib = args.max_gib if args.max_gib is not None else (0.2 if args.quick else 1.5)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    args.libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    args.sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    for name in args.libraries:
        if name not in LIBRARIES:
            parser.error(f"--libraries: unknown library {name!r}; known: {', '.join(LIBRARIES)}")
    for size in args.sizes:
        if size not in SIZES:
            parser.error(f"--sizes: unknown size {size!r}; known: {', '.join(SIZES)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def report(saved: dict[str, Any], plot_path: str) -> None:
    """The table, the goals and the plot of a run's measurements."""
    table = summaries(saved["runs"], saved["skipped"])
    print(markdown_table(table))
    print()
    for line in goals(table):
        print(line)
    for name, why in saved["skipped"].items():
        print(f"skipped {LIBRARIES[name][0]}: {why}")
    note = f"medians of {saved['args']['rounds']} interleaved round(s), bars min-max"
    if saved.get("machine"):
        note += f"; {saved['machine']}"
    plot(table, Path(plot_path), note)
    print(f"plot: {plot_path}")


def main() -> None:
    args = parse_args()
    if args.child:
        library, size = args.child
        result = measure(library, size, args.target_s, int(args.max_gib * GIB), args.warmup)
        print(json.dumps(result), flush=True)
        return
    if args.from_json:
        with open(args.from_json) as file:
            report(json.load(file), args.plot)
        return
    missing = missing_modules(args.libraries)
    if missing:
        sys.exit(
            f"bench_peers: missing {', '.join(missing)}: install the benchmark extra, {BENCH_EXTRA} "
            f"(or leave a peer out with --libraries)"
        )
    started = time.perf_counter()
    load = os.getloadavg()[0]
    print(
        f"{args.rounds} round(s), sizes {', '.join(args.sizes)}, libraries {', '.join(args.libraries)}; "
        f"<= {args.target_s} s and <= {args.max_gib} GiB of data a measurement, {args.warmup} warm-up "
        f"batches; {os.cpu_count()} CPUs, load average {load:.2f}",
        flush=True,
    )
    results, skipped = run_rounds(args)
    elapsed = time.perf_counter() - started
    end_load = os.getloadavg()[0]
    print(f"\ntotal {elapsed:.0f} s, load average now {end_load:.2f}\n")
    saved = {
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "from_json", "plot", "json")},
        "machine": f"{os.cpu_count()} CPUs, load average {load:.1f} at the start, {end_load:.1f} at the end",
        "runs": results,
        "skipped": skipped,
    }
    report(saved, args.plot)
    write_json(args.json, saved)


if __name__ == "__main__":
    main()
