"""Two-process DistributedDataParallel training (gloo, CPU) where one rank's data holds a NaN.

    python tests/torch_scripts/ddp_nan.py RUN_DIR [BAD_RANK] [BAD_STEP]

Each rank draws its own batches; at BAD_STEP the batch of BAD_RANK gets one NaN feature. That
rank's loss goes NaN; the gradient all-reduce then hands NaN gradients to the other rank too,
whose own forward and loss stayed finite. Both ranks keep stepping (a rank that stopped alone
would hang the other in the all-reduce) and record with the recorder: rank 0 into RUN_DIR, rank 1
into RUN_DIR/rank1/.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nandoctor.torch import Recorder

WORLD = 2
STEPS = 10


def worker(rank: int, world: int, run_dir: str, port: int, bad_rank: int, bad_step: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        model = DistributedDataParallel(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)
        with Recorder(model, run_dir, strict=True, total_steps=STEPS) as rec:
            for step in range(1, STEPS + 1):
                x = torch.randn(16, 4, generator=gen)
                y = (x[:, 0] > 0).long()
                if rank == bad_rank and step == bad_step:
                    x[3, 2] = float("nan")
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                rec.step(loss, opt, inputs=x, targets=y)
                opt.step()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    run_dir = argv[0]
    bad_rank = int(argv[1]) if len(argv) > 1 else 1
    bad_step = int(argv[2]) if len(argv) > 2 else 3
    mp.spawn(worker, args=(WORLD, run_dir, free_port(), bad_rank, bad_step), nprocs=WORLD, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
