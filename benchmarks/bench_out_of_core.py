"""Out-of-core streaming: thousands of memory-mapped files through ``mux | batch`` in bounded memory.

Run:  python benchmarks/bench_out_of_core.py

Writes ``--files`` ``.npy`` files of ``--rows`` x ``--cols`` float32 to a
temporary folder (by default 3000 files of 256 KiB, 750 MiB in all), makes one
``pf.random_stream(read_rows, path)`` source per file, and streams ``--samples``
samples through ``pf.mux(sources, n_active=16, rate=64, seed=0) | pf.batch(256)``.

A source maps its file only when an activation opens it and unmaps it when the
activation closes, so at most ``n_active`` files are mapped at any time. Pages
of a memmap count in the resident set only while they are mapped, so the
resident set stays flat however much of the dataset goes by. The script
samples VmRSS every few batches and reads the peak (VmHWM, reset before the
streaming starts where the kernel allows it) from ``/proc/self/status``, and
reports the growth over the starting RSS as a fraction of the dataset size.

``--workers k`` adds ``| pf.background(workers=k)``: the mux is divided among
the workers (its ``n_active`` shared out), and the script also reports the
peak RSS (VmHWM) of every worker process, read from ``/proc/<pid>/status``
while they run. Under ``fork`` a worker's VmHWM includes the pages it shares
with the consumer it was forked from.

``--case arrays`` instead writes one ``--array-mib`` MiB float32 ``.npy`` file
and runs ``pf.from_arrays(np.load(path, mmap_mode="r")) | pf.take(10) |
pf.background(workers=k)`` (then a full pass of ``| pf.batch(256)``),
reporting the size of the pickled recipe, the time to the first item and the
peak RSS of the consumer and of each worker: the memmap travels as its file
name and is mapped again in each worker, not copied.

Linux only (``/proc``). The folder is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

import pescador_fp as pf

MIB = 1 << 20


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status (this script needs Linux)")


def descendants(root: int) -> list[int]:
    """The processes below ``root`` (workers under fork, and under the forkserver's children)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # Fields after the command name, which is in parentheses and may hold spaces.
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += children
        frontier = children
    return found


class WorkerPeaks:
    """The highest VmHWM seen for each process below this one, read whenever ``sample`` runs."""

    def __init__(self) -> None:
        self.kib: dict[int, int] = {}
        self.names: dict[int, str] = {}

    def sample(self) -> None:
        for pid in descendants(os.getpid()):
            try:
                hwm = status_kib("VmHWM", pid)
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    name = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, RuntimeError):
                continue
            self.kib[pid] = max(self.kib.get(pid, 0), hwm)
            self.names.setdefault(pid, name[:60])

    def table(self) -> list[dict[str, Any]]:
        return [
            {"pid": pid, "peak_rss_kib": kib, "cmd": self.names[pid]} for pid, kib in sorted(self.kib.items())
        ]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def write_dataset(folder: Path, files: int, rows: int, cols: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(files):
        path = folder / f"part-{i:05d}.npy"
        np.save(path, rng.standard_normal((rows, cols), dtype=np.float32))
        paths.append(path)
    return paths


class MapCounter:
    """How many files are mapped now, at most, and in all."""

    now = 0
    most = 0
    opened = 0


def read_rows(path: Path, *, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The rows of one file, forever, from a random starting row (an infinite source, as in Pescador).

    The file is mapped when the activation starts (the first ``next``), and
    unmapped when the mux closes the generator: rows go out as copies, so no
    view keeps the map alive.
    """
    # np.asarray: a plain ndarray over the map, whose rows index ~5x faster than np.memmap's.
    rows = np.asarray(np.load(path, mmap_mode="r"))
    MapCounter.now += 1
    MapCounter.opened += 1
    MapCounter.most = max(MapCounter.most, MapCounter.now)
    try:
        # The starting row spreads reads over each file; pf.random_stream seeds it from the pass.
        i = int(rng.integers(len(rows)))
        while True:
            yield rows[i].copy()
            i = (i + 1) % len(rows)
    finally:
        MapCounter.now -= 1
        del rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pf-out-of-core-") as tmp:
        start = time.perf_counter()
        paths = write_dataset(Path(tmp), args.files, args.rows, args.cols)
        write_s = time.perf_counter() - start
        dataset_bytes = sum(p.stat().st_size for p in paths)
        print(
            f"wrote {len(paths):,} files of {args.rows} x {args.cols} float32 "
            f"({dataset_bytes / MIB:,.1f} MiB on disk) in {write_s:.1f} s"
        )

        sources = [pf.random_stream(read_rows, p) for p in paths]
        train = pf.mux(sources, n_active=args.n_active, rate=args.rate, seed=0) | pf.batch(args.batch)
        if args.workers:
            train = train | pf.background(workers=args.workers)
        workers = WorkerPeaks()
        n_batches = args.samples // args.batch
        checkpoints = {max(1, round(n_batches * j / args.points)) for j in range(1, args.points + 1)}

        peak_reset = reset_peak_rss()
        rss_start = status_kib("VmRSS")
        trace = [(0, rss_start)]
        checksum = 0.0
        start = time.perf_counter()
        for k, b in enumerate(train, 1):
            checksum += float(b[0, 0])
            if k in checkpoints:
                trace.append((k * args.batch, status_kib("VmRSS")))
                workers.sample()
            if k == n_batches:
                break
        seconds = time.perf_counter() - start
        hwm = status_kib("VmHWM")
        rss_end = status_kib("VmRSS")

    samples = n_batches * args.batch
    growth = (hwm - rss_start) * 1024
    return {
        "files": args.files,
        "rows": args.rows,
        "cols": args.cols,
        "dataset_bytes": dataset_bytes,
        "write_s": write_s,
        "n_active": args.n_active,
        "rate": args.rate,
        "batch": args.batch,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "mib_per_s": samples * args.cols * 4 / MIB / seconds,
        "rss_start_kib": rss_start,
        "rss_trace_kib": trace,
        "rss_end_kib": rss_end,
        "peak_rss_kib": hwm,
        "files_mapped_at_most": MapCounter.most,
        "activations": MapCounter.opened,
        "peak_reset_before_streaming": peak_reset,
        "peak_growth_bytes": growth,
        "peak_growth_fraction_of_dataset": growth / dataset_bytes,
        "checksum": checksum,
        "workers": args.workers,
        "worker_peaks": workers.table(),
    }


def run_arrays(args: argparse.Namespace) -> dict[str, Any]:
    """One big memmap through ``from_arrays | take(10) | background``, then a full pass in batches."""
    with tempfile.TemporaryDirectory(prefix="pf-out-of-core-") as tmp:
        path = Path(tmp) / "big.npy"
        rows = args.array_mib * MIB // (4 * args.cols)
        big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, args.cols))
        for start in range(0, rows, 65536):
            big[start : start + 65536] = start
        big.flush()
        del big
        data = np.load(path, mmap_mode="r")
        recipe_bytes = len(cloudpickle.dumps(pf.from_arrays(data)))
        results: dict[str, Any] = {"array_bytes": data.nbytes, "recipe_bytes": recipe_bytes, "runs": []}
        print(f"{data.nbytes / MIB:,.0f} MiB memmap; pickled from_arrays(data): {recipe_bytes:,} bytes")
        pipelines = {
            "from_arrays(data) | take(10)": pf.from_arrays(data) | pf.take(10),
            f"from_arrays(data) | batch({args.batch})": pf.from_arrays(data) | pf.batch(args.batch),
        }
        for name, pipeline in pipelines.items():
            workers = WorkerPeaks()
            peak_reset = reset_peak_rss()
            rss_start = status_kib("VmRSS")
            start = time.perf_counter()
            first_s = None
            n = 0
            for n, _ in enumerate(pipeline | pf.background(workers=args.workers or 2), 1):
                if first_s is None:
                    first_s = time.perf_counter() - start
                if n % 64 == 1:
                    workers.sample()
            seconds = time.perf_counter() - start
            run = {
                "pipeline": f"{name} | background(workers={args.workers or 2})",
                "items": n,
                "first_item_s": first_s,
                "seconds": seconds,
                "rss_start_kib": rss_start,
                "peak_rss_kib": status_kib("VmHWM"),
                "peak_reset_before_streaming": peak_reset,
                "worker_peaks": workers.table(),
            }
            results["runs"].append(run)
            print(
                f"{run['pipeline']}: {n:,} items, first after {first_s * 1e3:.1f} ms, all in {seconds:.2f} s"
            )
            peak = run["peak_rss_kib"]
            print(f"  consumer RSS at start {rss_start / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
            for w in run["worker_peaks"]:
                print(f"  pid {w['pid']:>7} peak RSS {w['peak_rss_kib'] / 1024:8.1f} MiB  {w['cmd']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=256, help="rows per file")
    parser.add_argument("--cols", type=int, default=256, help="float32 values per row (a sample)")
    parser.add_argument("--samples", type=int, default=3_000_000)
    parser.add_argument("--n-active", type=int, default=16)
    parser.add_argument("--rate", type=float, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--points", type=int, default=10, help="how many RSS samples to take while streaming")
    parser.add_argument("--workers", type=int, default=0, help="add | background(workers=k) (0: none)")
    parser.add_argument("--case", choices=["mux", "arrays"], default="mux")
    parser.add_argument("--array-mib", type=int, default=1024, help="--case arrays: size of the memmap")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    if args.case == "arrays":
        results = run_arrays(args)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(results, out, indent=2)
        return

    r = run(args)
    print(
        f"streamed {r['samples']:,} samples ({r['samples'] * args.cols * 4 / MIB:,.0f} MiB) through "
        f"mux(n_active={r['n_active']}, rate={r['rate']:g}) | batch({r['batch']})"
        + (f" | background(workers={args.workers})" if args.workers else "")
        + f" in {r['seconds']:.1f} s: {r['samples_per_s']:,.0f} samples/s, {r['mib_per_s']:,.0f} MiB/s"
    )
    if not args.workers:  # the counters live in the process that runs the sources
        print(
            f"{r['activations']:,} activations; at most {r['files_mapped_at_most']} files mapped at once "
            f"(n_active={r['n_active']})"
        )
    print(f"RSS at start       {r['rss_start_kib'] / 1024:8.1f} MiB")
    for done, kib in r["rss_trace_kib"][1:]:
        print(f"RSS at {done:>11,}  {kib / 1024:8.1f} MiB")
    print(f"RSS at end         {r['rss_end_kib'] / 1024:8.1f} MiB")
    print(
        f"peak RSS (VmHWM)   {r['peak_rss_kib'] / 1024:8.1f} MiB"
        + ("" if r["peak_reset_before_streaming"] else "   (not reset: includes writing the files)")
    )
    print(
        f"peak RSS above start: {r['peak_growth_bytes'] / MIB:.1f} MiB = "
        f"{r['peak_growth_fraction_of_dataset']:.2%} of the {r['dataset_bytes'] / MIB:,.1f} MiB dataset"
    )
    for w in r["worker_peaks"]:
        print(f"worker pid {w['pid']:>7} peak RSS (VmHWM) {w['peak_rss_kib'] / 1024:8.1f} MiB  {w['cmd']}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(r, out, indent=2)


if __name__ == "__main__":
    main()
