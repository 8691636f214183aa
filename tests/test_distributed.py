"""Data-parallel training: the sharded loader, and torchrun with two CPU processes against one process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import data, train
from common.distributed import ShardedLoader

ROOT = Path(__file__).resolve().parent.parent


def test_shards_of_every_global_batch_are_the_single_process_batch():
    x, y = torch.arange(21).float().view(-1, 1, 1, 1), torch.arange(21)
    single = data.TensorLoader(x, y, batch_size=8, shuffle=True, seed=5, transform=data.Augment(flip=True, seed=2))
    shards = [ShardedLoader(x, y, batch_size=8, rank=r, world_size=2, shuffle=True, seed=5,
                            transform=data.Augment(flip=True, seed=2)) for r in range(2)]
    for epoch in range(2):                                           # a new order every epoch, the same on both
        iterators = [iter(s) for s in shards]
        for xb, yb in single:
            parts = [next(it) for it in iterators]
            assert torch.equal(torch.cat([p[1] for p in parts]), yb)
            assert torch.equal(torch.cat([p[0] for p in parts]), xb)
            weights = [s.loss_weight for s in shards]
            sizes = [p[1].shape[0] for p in parts]
            assert weights == [n * 2 / yb.shape[0] for n in sizes]
            # DDP averages the ranks' weighted mean losses: that is the mean over the global batch
            ddp_mean = sum(w * p[1].double().mean() for w, p in zip(weights, parts)) / 2
            assert ddp_mean.item() == pytest.approx(yb.double().mean().item(), rel=1e-12)
        assert all(next(it, None) is None for it in iterators)
    assert sizes == [3, 2] and weights == [1.2, 0.8]                # the last batch (5) splits unevenly


def test_sharded_loader_rejects_what_cannot_split():
    x = torch.zeros(17, 1)
    with pytest.raises(ValueError, match="not a multiple of the 2 processes"):
        ShardedLoader(x, batch_size=7, rank=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        ShardedLoader(x, batch_size=8, rank=0, world_size=4)         # last batch: 1 example for 4 processes
    with pytest.raises(ValueError, match="rank must be"):
        ShardedLoader(x, batch_size=8, rank=2, world_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 201 images in global batches of 64: the last batch (9) splits 5/4, which only the loss weight makes exact.
# LeNet-5 has neither BatchNorm (statistics per rank) nor dropout (masks per rank): with those, DDP trains
# a slightly different model than one process, by design.
ARGS = ["-m", "common.train", "--model", "lenet5", "--epochs", "2", "--train-limit", "201", "--val-limit", "100",
        "--test-limit", "100", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05", "--nesterov",
        "--crop-padding", "2", "--flip", "--device", "cpu", "--no-progress"]


def test_torchrun_two_cpu_processes_train_what_one_process_trains(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    port = _free_port()
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={port}"] + ARGS + ["--out", str(tmp_path / "ddp")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-4000:]
    assert ddp.stdout.count("epoch  1/2") == 1, "only rank 0 logs"
    train.main(ARGS[2:] + ["--out", str(tmp_path / "one")])           # one process: this one (1 thread, conftest)
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["epoch"] == b["epoch"] == 2
    # Same arithmetic, another order of float32 sums: one process averages 64 per-example gradients in one
    # reduction; two average 32 (or 5 and 4, weighted) each, then all-reduce the halves. Each step differs
    # by float32 rounding (~1e-7 relative); after 8 SGD steps the weights (|w| < 0.3) agree within 1e-6.
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6, msg=key)
    assert a["history"]["train_loss"] == pytest.approx(b["history"]["train_loss"], rel=1e-5)
    assert a["history"]["train_acc"] == b["history"]["train_acc"]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "last.pt", "results.json"]
