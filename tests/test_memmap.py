"""File-backed arrays travel as their file: a memmap source reaches background workers without a copy.

Real files in ``tmp_path``, real worker processes under every start method.
"""

from __future__ import annotations

import os
import re

import cloudpickle
import numpy as np
import pytest
from helpers import own_shm_entries, same_items

import pescador_fp as pf

START_METHODS = ["fork", "forkserver", "spawn"]
# A pickled recipe that names its file, against the megabytes of the file itself.
SMALL_RECIPE_BYTES = 4096
# Tests that start workers; a worker that cannot map its file must not hang them.
WORKER_TIMEOUT_S = 120


def make_file(path, rows=4096, cols=256, dtype=np.float32, order="C"):
    """A .npy file of ``rows x cols`` distinct values, opened read-only as a memmap."""
    data = np.lib.format.open_memmap(
        path, mode="w+", dtype=dtype, shape=(rows, cols), fortran_order=order == "F"
    )
    data[:] = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols).astype(dtype)
    data.flush()
    del data
    return np.load(path, mmap_mode="r")


@pytest.fixture
def data(tmp_path):
    return make_file(tmp_path / "data.npy")  # 4 MiB


def recipe_size(stream):
    return len(cloudpickle.dumps(stream))


def test_memmap_sources_pickle_as_their_file_not_their_bytes(tmp_path, data):
    labels = make_file(tmp_path / "labels.npy", rows=4096, cols=1, dtype=np.int64)

    def rows_of(array):
        yield from array

    streams = [
        pf.from_arrays(data),
        pf.from_arrays({"x": data, "y": labels}),
        pf.from_arrays((data, labels)),
        pf.from_iterable(data),
        pf.from_iterable([data, labels]),
        pf.stream(rows_of, data),
        pf.stream(rows_of, array=np.asarray(data)),  # an ndarray view of the mapping is file-backed too
    ]
    assert data.nbytes == 4 * 2**20
    for s in streams:
        assert recipe_size(s) < SMALL_RECIPE_BYTES, s
        copy = cloudpickle.loads(cloudpickle.dumps(s))
        assert same_items(list(copy), list(s)), s
    for index in range(3):
        part, _ = pf.from_arrays({"x": data, "y": labels})._divide(index, 3)
        assert recipe_size(part) < SMALL_RECIPE_BYTES


def test_in_memory_arrays_still_travel_by_value(data):
    in_memory = [np.arange(10.0), data + 1, np.array(data[:3])]  # data + 1 is a memmap without a file
    for array in in_memory:
        copy = cloudpickle.loads(cloudpickle.dumps(pf.from_arrays(array)))
        assert same_items(list(copy), list(pf.from_arrays(array)))


def views(data):
    return {
        "rows": data[100:300],
        "every third row": data[1::3],
        "reversed": data[::-1, ::-1],
        "strided both ways": data[::-7, 5:200:3],
        "column": data[:, 17],
        "ndarray of it": np.asarray(data)[10:20, ::2],
        "transposed": data.T[::5],
    }


def test_strided_and_sliced_views_round_trip_by_file(data):
    for name, view in views(data).items():
        pickled = cloudpickle.dumps(view_stream := pf.from_arrays(view))
        assert len(pickled) < SMALL_RECIPE_BYTES, name
        (copy,) = cloudpickle.loads(pickled).arrays
        assert copy.strides == view.strides and type(copy) is type(view), name
        assert np.array_equal(copy, view), name
        assert same_items(list(cloudpickle.loads(pickled)), list(view_stream)), name


def test_memmaps_at_an_offset_in_fortran_order_and_with_records(tmp_path):
    path = tmp_path / "raw.bin"
    record = np.dtype([("x", np.float32, (3,)), ("label", np.int16)])
    header = 1000  # not a multiple of the page size
    with open(path, "wb") as f:
        f.write(b"h" * header)
        f.write(np.arange(5000 * record.itemsize, dtype=np.uint8).tobytes())
    records = np.memmap(path, dtype=record, mode="r", offset=header, shape=(5000,))
    fortran = make_file(tmp_path / "fortran.npy", rows=300, cols=40, order="F")
    for array in (records, records[7::3], records["x"][::2, 1], fortran, fortran[5:, ::3]):
        copy = cloudpickle.loads(cloudpickle.dumps(array_stream := pf.from_iterable(array))).items
        assert recipe_size(array_stream) < SMALL_RECIPE_BYTES
        assert copy.dtype == array.dtype and copy.strides == array.strides
        assert copy.tobytes() == array.tobytes()  # bytes: some of these floats are NaN


@pytest.mark.timeout(WORKER_TIMEOUT_S)
@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_background_over_a_memmap_gives_the_same_items(tmp_path, data, start_method, workers):
    labels = make_file(tmp_path / "labels.npy", rows=4096, cols=1, dtype=np.int64)
    s = pf.from_arrays({"x": data[::5], "y": labels[::5]})
    got = list(s | pf.background(workers=workers, start_method=start_method))
    want = list(s)
    if workers > 1:  # parts are merged in turn: compare as sets of rows
        got.sort(key=lambda row: int(row["y"][0]))
    assert same_items(got, want)
    assert own_shm_entries() == []


@pytest.mark.timeout(WORKER_TIMEOUT_S)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_workers_read_the_file_itself(data, start_method):
    # Rows of a memmap are memmaps of the same file; a copy made by pickling would have none.
    s = pf.from_iterable(data[:4]) | pf.map(lambda row: (str(row.filename), row.flags.writeable))
    got = list(s | pf.background(workers=2, start_method=start_method))
    assert sorted(got) == [(str(data.filename), False)] * 4


@pytest.mark.timeout(WORKER_TIMEOUT_S)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_writes_through_an_r_plus_memmap_are_shared_not_copied(tmp_path, start_method):
    path = tmp_path / "shared.npy"
    make_file(path, rows=64, cols=8)
    shared = np.load(path, mmap_mode="r+")

    def mark(row):
        seen = float(row[0])
        row[1] = -seen  # written by the worker, into the file
        return seen

    s = pf.from_arrays(shared) | pf.map(mark) | pf.background(workers=2, start_method=start_method)
    shared[:, 0] = np.arange(100, 164)  # written by the consumer after the stream was built
    assert sorted(s) == list(range(100, 164))
    assert np.array_equal(shared[:, 1], -np.arange(100, 164))
    assert np.array_equal(np.load(path)[:, 1], -np.arange(100, 164))


@pytest.mark.timeout(WORKER_TIMEOUT_S)
def test_a_copy_on_write_memmap_stays_private_in_workers(tmp_path):
    path = tmp_path / "private.npy"
    make_file(path, rows=16, cols=4)
    private = np.load(path, mmap_mode="c")

    def scribble(row):
        row[:] = -1
        return float(row.sum())

    s = pf.from_arrays(private) | pf.map(scribble) | pf.background(workers=2)
    assert list(s) == [-4.0] * 16
    assert np.array_equal(np.load(path), make_file(tmp_path / "again.npy", rows=16, cols=4))
    assert np.array_equal(private, np.load(path))


@pytest.mark.timeout(WORKER_TIMEOUT_S)
def test_a_deleted_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "gone.npy"
    s = pf.from_arrays(make_file(path)) | pf.background(workers=2)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        cloudpickle.dumps(s)
    with pytest.raises(Exception, match=re.escape(str(path))):
        list(s)
    assert own_shm_entries() == []


def test_a_file_replaced_before_sending_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "data.npy"
    s = pf.from_arrays(make_file(path))
    np.save(tmp_path / "new.npy", np.zeros((4096, 256), np.float32))
    os.replace(tmp_path / "new.npy", path)  # the consumer's mapping keeps the old file
    with pytest.raises(pf.PescadorError, match=re.escape(str(path))):
        cloudpickle.dumps(s)


def test_a_file_truncated_before_sending_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "data.npy"
    s = pf.from_arrays(make_file(path)[:100])  # rows at the start, still in the file
    whole = pf.from_arrays(np.load(path, mmap_mode="r"))
    os.truncate(path, 2**20)
    assert recipe_size(s) < SMALL_RECIPE_BYTES
    with pytest.raises(pf.PescadorError, match=re.escape(str(path))):
        cloudpickle.dumps(whole)


@pytest.mark.parametrize("change", ["delete", "replace", "truncate"])
def test_a_file_changed_after_sending_is_a_clear_error_naming_it(tmp_path, change):
    path = tmp_path / "data.npy"
    pickled = cloudpickle.dumps(pf.from_arrays(make_file(path)))
    if change == "delete":
        os.remove(path)
    elif change == "replace":
        np.save(tmp_path / "new.npy", np.zeros((4096, 256), np.float32))
        os.replace(tmp_path / "new.npy", path)
    else:
        os.truncate(path, 2**20)
    error = FileNotFoundError if change == "delete" else pf.PescadorError
    with pytest.raises(error, match=re.escape(str(path))):
        cloudpickle.loads(pickled)


# ------------------------------------------------------------------ a flat footprint


def resident_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


BIG_ROWS, BIG_COLS = 64 * 1024, 256  # 64 MiB of float32
# A pass over the whole file keeps at most a chunk or two of its pages mapped.
FLAT_GROWTH_KIB = 16 * 1024


@pytest.fixture
def big(tmp_path):
    path = tmp_path / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(BIG_ROWS, BIG_COLS))
    data[:] = np.arange(BIG_ROWS, dtype=np.float32)[:, None]
    data.flush()
    del data
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_a_full_pass_over_a_memmap_keeps_a_flat_footprint(big, mode):
    data = np.load(big, mmap_mode=mode)
    before = resident_kib()
    total = 0.0
    for batch in pf.from_arrays({"x": data}) | pf.batch(256):
        total += float(batch["x"][:, 0].sum())
    grown = resident_kib() - before
    assert total == float(np.arange(BIG_ROWS).sum())
    assert grown < FLAT_GROWTH_KIB, f"resident memory grew by {grown / 1024:.0f} MiB over a 64 MiB memmap"


@pytest.mark.timeout(WORKER_TIMEOUT_S)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_workers_keep_a_flat_footprint_over_a_memmap(big):
    def worker_rss(batch):
        return os.getpid(), resident_kib(), float(batch[:, 0].sum())

    s = pf.from_arrays(np.load(big, mmap_mode="r")) | pf.batch(256) | pf.map(worker_rss)
    seen = list(s | pf.background(workers=2))
    assert sum(total for _, _, total in seen) == float(np.arange(BIG_ROWS).sum())
    for pid in {pid for pid, _, _ in seen}:
        rss = [kib for p, kib, _ in seen if p == pid]
        assert max(rss) - rss[0] < FLAT_GROWTH_KIB, (
            f"worker {pid} grew by {(max(rss) - rss[0]) / 1024:.0f} MiB"
        )


def test_a_copy_on_write_memmap_keeps_its_changes_through_a_pass(tmp_path):
    path = tmp_path / "private.npy"
    make_file(path, rows=5000, cols=256)
    private = np.load(path, mmap_mode="c")
    private[::7] = -1.0  # changes in this process's pages only
    rows = list(pf.from_arrays(private) | pf.map(lambda row: float(row[0])))
    assert rows == [float(x) for x in private[:, 0]]
    assert (private[::7] == -1.0).all()


@pytest.mark.timeout(WORKER_TIMEOUT_S)
def test_a_copy_on_write_memmap_changed_anywhere_reaches_the_workers_as_changed(tmp_path):
    path = tmp_path / "private.npy"
    make_file(path, rows=4096, cols=4)
    private = np.load(path, mmap_mode="c")
    private[2000] = 7.0  # in the middle: no check of a few pages of the file could see it
    out = [float(row[0]) for row in pf.from_arrays(private) | pf.background(workers=2)]
    assert out == [float(x) for x in private[:, 0]]
