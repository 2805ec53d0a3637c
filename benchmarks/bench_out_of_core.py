"""Out-of-core streaming: thousands of memory-mapped files through ``mux | batch`` in bounded memory.

Run:  python benchmarks/bench_out_of_core.py

Writes ``--files`` ``.npy`` files of ``--rows`` x ``--cols`` float32 to a
temporary folder (by default 3000 files of 256 KiB, 750 MiB in all), makes one
``pf.stream(read_rows, path)`` source per file, and streams ``--samples``
samples through ``pf.mux(sources, n_active=16, rate=64, seed=0) | pf.batch(256)``.

A source maps its file only when an activation opens it and unmaps it when the
activation closes, so at most ``n_active`` files are mapped at any time. Pages
of a memmap count in the resident set only while they are mapped, so the
resident set stays flat however much of the dataset goes by. The script
samples VmRSS every few batches and reads the peak (VmHWM, reset before the
streaming starts where the kernel allows it) from ``/proc/self/status``, and
reports the growth over the starting RSS as a fraction of the dataset size.
Linux only (``/proc``). The folder is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import pescador_fp as pf

MIB = 1 << 20


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this script needs Linux)")


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


def read_rows(path: Path) -> Iterator[np.ndarray]:
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
        # The starting row is not part of the seed tree; it only spreads reads over each file.
        i = int(np.random.default_rng().integers(len(rows)))
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

        sources = [pf.stream(read_rows, p) for p in paths]
        train = pf.mux(sources, n_active=args.n_active, rate=args.rate, seed=0) | pf.batch(args.batch)
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
    }


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
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    r = run(args)
    print(
        f"streamed {r['samples']:,} samples ({r['samples'] * args.cols * 4 / MIB:,.0f} MiB) through "
        f"mux(n_active={r['n_active']}, rate={r['rate']:g}) | batch({r['batch']}) "
        f"in {r['seconds']:.1f} s: {r['samples_per_s']:,.0f} samples/s, {r['mib_per_s']:,.0f} MiB/s"
    )
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
    if args.json:
        with open(args.json, "w") as out:
            json.dump(r, out, indent=2)


if __name__ == "__main__":
    main()
