"""The baseline process: plain CUDA work with no supervisor (or plain Python in a dry run).

`hold` runs in a spawned child: it imports torch, puts ``weights_mb`` MiB on the GPU
(nothing in a dry run), says so on its pipe and sleeps until killed. The parent then
SIGKILLs it and times the moment its pidfd turns readable: the kernel's own limit
for seeing a CUDA process die, CUDA teardown included.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection


def hold(conn: Connection, weights_mb: int, cuda: bool) -> None:
    weights = None
    if cuda:
        import torch

        weights = torch.ones(weights_mb * 2**20 // 4, device="cuda")
        torch.cuda.synchronize()
    conn.send("ready" if weights is not None or not cuda else "no weights")
    conn.close()
    time.sleep(3600)
