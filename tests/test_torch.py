"""pescador_fp.torch: a DataLoader sees every item once with any num_workers, epochs reseed, arrays become
tensors without a copy, and a real 2-process DDP run over shard(equal=True) trains without hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import need, nothing_left_behind

import pescador_fp as pf

need("torch")
torch = pytest.importorskip("torch")
pft = pytest.importorskip("pescador_fp.torch")

pytestmark = [
    pytest.mark.timeout(180),
    # 3 loader workers on a 2-core machine: torch's advice, not a fault
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_leftovers():
    with nothing_left_behind(deadline_s=5):
        yield


def loader(ds, workers):
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)


def values(batches):
    return Counter(int(v) for b in batches for v in b.reshape(-1).tolist())


def test_importing_pescador_fp_imports_no_framework():
    code = "import sys, pescador_fp; print(sorted({'torch', 'jax', 'keras'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "make",
    [
        lambda: pf.from_arrays(np.arange(50)) | pf.shuffle(7) | pf.batch(4, partial=True),
        lambda: pf.stream(lambda: iter(range(50))) | pf.map(lambda x: np.array([x])),
        lambda: (
            pf.mux([pf.from_iterable(range(i, 50, 5)) for i in range(5)], 2, mode="exhaustive")
            | pf.map(np.array)
        ),
    ],
    ids=["arrays", "generator", "mux"],
)
def test_a_dataloader_sees_every_item_once_with_any_number_of_workers(make, workers):
    ds = pft.dataset(make())
    assert values(loader(ds, workers)) == Counter(range(50))


def test_without_workers_the_dataset_is_the_whole_stream_in_order():
    stream = pf.from_arrays(np.arange(20)) | pf.shuffle(5) | pf.batch(5)
    ds = pft.dataset(stream)
    ds.set_epoch(3)
    got = [b.tolist() for b in loader(ds, 0)]
    assert got == [b.tolist() for b in stream.iterate(seed=3)]


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_reseeds_every_worker_reproducibly(workers):
    ds = pft.dataset(pf.from_arrays(np.arange(40)) | pf.shuffle(40) | pf.batch(4))

    def epoch(e):
        ds.set_epoch(e)
        return [b.tolist() for b in loader(ds, workers)]

    assert epoch(1) == epoch(1)
    assert epoch(1) != epoch(2)
    assert values(torch.tensor(b) for b in epoch(2)) == Counter(range(40))


def test_set_epoch_refuses_a_bad_epoch():
    ds = pft.dataset(pf.from_iterable([1]))
    with pytest.raises(ValueError, match="set_epoch: epoch must be an integer >= 0, got -1"):
        ds.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch"):
        ds.set_epoch(1.5)


def test_arrays_become_tensors_over_the_same_memory_through_nested_samples():
    x = np.arange(12.0).reshape(3, 4)
    item = {"x": x, "meta": ("id", [x[1], 7]), "n": np.int64(3)}
    out = pft.as_tensors(item)
    assert isinstance(out["x"], torch.Tensor) and out["x"].data_ptr() == x.ctypes.data
    assert out["meta"][0] == "id" and isinstance(out["meta"][1][0], torch.Tensor) and out["meta"][1][1] == 7
    assert out["n"] == 3 and not isinstance(out["n"], torch.Tensor)
    out["x"][0, 0] = 100.0
    assert x[0, 0] == 100.0


def test_read_only_and_untyped_arrays_are_handled_without_warnings():
    frozen = np.arange(3)
    frozen.flags.writeable = False
    words = np.array(["a", "b"])
    out = pft.as_tensors([frozen, words])
    assert out[0].tolist() == [0, 1, 2] and out[1] is words


def test_tensors_after_background_on_cpu():
    stream = pf.from_arrays({"x": np.ones((8, 3), np.float32)}) | pf.batch(2) | pf.background(workers=2)
    got = list(stream | pft.tensors(device="cpu", pin_memory=True))
    assert len(got) == 4 and all(isinstance(b["x"], torch.Tensor) and b["x"].shape == (2, 3) for b in got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a GPU")
def test_tensors_pins_and_moves_to_cuda():
    got = list(pf.from_iterable([np.ones(4)] * 3) | pft.tensors(device="cuda", pin_memory=True))
    assert all(t.device.type == "cuda" for t in got)


def test_tensors_after_background_share_its_blocks():
    from pescador_fp._ipc.pool import segment_at

    stream = pf.from_arrays({"x": np.ones((64, 2**12), np.float32)}) | pf.batch(16) | pf.background()
    got = list(stream | pft.tensors())
    assert len(got) == 4 and all(segment_at(b["x"].data_ptr()) is not None for b in got)
    assert all((b["x"] == 1).all() for b in got)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="pinning background's blocks in place (cudaHostRegister) needs a CUDA device; there is none here",
)
def test_tensors_pin_background_blocks_in_place_and_move_them():
    from pescador_fp._ipc.pool import segment_at

    stream = pf.from_iterable(range(200)) | pf.map(lambda i: np.full(2**18, i, np.float32)) | pf.background()
    for i, t in enumerate(stream | pft.tensors(pin_memory=True)):
        assert segment_at(t.data_ptr()) is not None and t.is_pinned()  # no pinning copy
        assert float(t[0]) == i
    moved = list(stream | pft.tensors(device="cuda", pin_memory=True))
    assert [float(t[-1]) for t in moved] == list(range(200))


def test_tensors_checks_its_arguments_when_built():
    with pytest.raises(ValueError, match="tensors: device must name a torch device, got 'gpu0'"):
        pft.tensors(device="gpu0")
    with pytest.raises(TypeError, match=r"tensors: device must be None, a str or a torch\.device, got 3"):
        pft.tensors(device=3)
    with pytest.raises(TypeError, match="tensors: pin_memory must be True or False"):
        pft.tensors(pin_memory="yes")
    assert repr(pft.tensors("cpu", pin_memory=True)) == "tensors(device='cpu', pin_memory=True)"


# ------------------------------------------------------------------ a real DDP group

DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch, torch.distributed as dist
    import pescador_fp as pf, pescador_fp.torch as pft

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    n = int(sys.argv[2])
    data = {"x": np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32), "id": np.arange(n)}
    train = pf.from_arrays(data) | pf.shard(rank, world, equal=True) | pf.shuffle(8) | pf.batch(4)
    ds = pft.dataset(train)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        ids = []
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
            loss = model(batch["x"]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()  # an all-reduce: a rank with one step more would hang here
            optimizer.step()
            ids += batch["id"].tolist()
        seen.append(ids)
    weights = [p.detach().reshape(-1).tolist() for p in model.parameters()]
    dist.destroy_process_group()
    with open(sys.argv[1], "w") as f:
        json.dump({"seen": seen, "weights": weights}, f)
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n", [48, 50])
def test_ddp_ranks_see_disjoint_parts_that_make_the_dataset(tmp_path, n):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(outs[r]), str(n)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    try:
        logs = [p.communicate(timeout=120)[0].decode() for p in procs]  # a hang fails here
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], logs
    results = [json.loads(out.read_text()) for out in outs]
    for epoch in range(3):
        rank0, rank1 = (set(r["seen"][epoch]) for r in results)
        assert len(rank0) == len(results[0]["seen"][epoch]) and len(rank0) == len(rank1)
        assert not rank0 & rank1
        # each rank's rows (24 or 25) are dealt to its 2 loader workers, which make 3 batches of 4 each
        assert len(rank0 | rank1) == 48 and (rank0 | rank1) <= set(range(n))
    assert results[0]["seen"][0] != results[0]["seen"][1]  # each epoch its own order
    assert results[0]["weights"] == results[1]["weights"]  # the group stayed in step


LOADER_SCRIPT = """
import sys
import pescador_fp as pf
import pescador_fp.torch as pft
from torch.utils.data import DataLoader

if __name__ == "__main__":
    scale = 3
    ds = pft.dataset(pf.from_iterable(range(10)) | pf.map(lambda x: x * scale))
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=sys.argv[1])
    print(sorted(int(x) for x in loader))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_loader_workers_that_start_afresh_receive_lambdas_and_closures(tmp_path, method):
    script = tmp_path / "loader.py"
    script.write_text(LOADER_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), method], capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == str([x * 3 for x in range(10)])


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3, dtype=">f4"),
        np.arange(10.0)[::-1],
        np.arange(12, dtype=">i8").reshape(3, 4)[:, ::-2],
    ],
    ids=["big-endian", "negative-stride", "both"],
)
def test_arrays_torch_cannot_take_as_they_are_become_tensors_of_the_same_values(array):
    tensor = pft.as_tensors(array)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.tolist() == array.tolist()


def test_dataset_state_dict_resumes_the_epoch_where_it_stopped():
    stream = pf.mux([pf.from_arrays(np.arange(10 * i, 10 * i + 10)) for i in range(4)], 2, 3, seed=0)
    stream = stream | pf.take(30) | pf.shuffle(5) | pf.batch(3) | pf.background(workers=2)
    ds = pft.dataset(stream)
    ds.set_epoch(2)
    with nothing_left_behind():
        whole = [t.tolist() for t in torch.utils.data.DataLoader(ds, batch_size=None)]
        loader = iter(torch.utils.data.DataLoader(ds, batch_size=None))
        first = [next(loader).tolist() for _ in range(4)]
        saved = json.loads(json.dumps(ds.state_dict()))
        del loader
        again = pft.dataset(stream)
        again.load_state_dict(saved)
        assert again.epoch == 2
        rest = [t.tolist() for t in torch.utils.data.DataLoader(again, batch_size=None)]
        assert first + rest == whole
        with pytest.raises(ValueError, match="expected the dict that state_dict"):
            again.load_state_dict({"pass": None})


def test_a_state_dict_taken_after_set_epoch_starts_that_epoch_afresh():
    stream = pf.from_arrays(np.arange(20)) | pf.shuffle(8) | pf.batch(4)
    ds = pft.dataset(stream)
    assert len(list(torch.utils.data.DataLoader(ds, batch_size=None))) == 5  # epoch 0 done
    ds.set_epoch(1)  # a checkpoint between epochs
    saved = json.loads(json.dumps(ds.state_dict()))
    assert saved == {"epoch": 1, "pass": None}
    again = pft.dataset(stream)
    again.load_state_dict(saved)
    got = [t.tolist() for t in torch.utils.data.DataLoader(again, batch_size=None)]
    assert got == [b.tolist() for b in stream.iterate(seed=1)]
