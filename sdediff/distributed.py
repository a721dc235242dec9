"""torchrun for the commands: join the process group, split work by sample index, gather it.

Under ``torchrun --nproc_per_node=W -m sdediff COMMAND ...`` every rank runs the same command.
Training shares each step's batch (:class:`~sdediff.train.Trainer`); ``sample``, ``encode``,
``likelihood`` and ``bench`` split their work instead: the examples are cut into the batches a
single process would run (``--batch-size``), batch ``k`` goes to rank ``k mod W``, and rank 0
gathers the results in index order and alone writes them. Each sample's randomness comes from
:class:`~sdediff.streams.SampleSeeds` keyed by its index, so the output is the single process's,
bit for bit when the processes run the same batches with the same number of threads (a batch's
floating-point result can depend on the batch's size and on the thread count of the kernels).

A rank that dies makes the others' collectives fail: they raise :class:`RankLost` (a
``ConnectionError``, printed as one line by the CLI) and no output is written.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .checks import InputValueError, check_int


class RankLost(ConnectionError):
    """Another rank of a torchrun job stopped before its results were gathered."""


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)``: of the process group, else torchrun's environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> torch.device:
    """Join torchrun's process group when torchrun started this process (``WORLD_SIZE`` > 1):
    gloo on the CPU, nccl on CUDA with each rank on its own GPU, ``cuda:LOCAL_RANK``. Returns the
    device this rank works on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.index is not None:
            raise InputValueError(f"--device {device} names one GPU but torchrun started {world} "
                                  "processes; allowed: --device cuda (each rank takes cuda:LOCAL_RANK)")
        if local >= torch.cuda.device_count():
            raise InputValueError(f"torchrun started local rank {local} but this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s); allowed: "
                                  f"--nproc_per_node <= {torch.cuda.device_count()}, or --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise InputValueError(f"--device {device} cannot run on {world} processes; allowed: cpu "
                              "(gloo) or cuda (nccl)")
    dist.init_process_group(backend)
    return device


def leave() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` index ranges a single process runs: ``n`` examples in batches of
    ``batch_size``."""
    return [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]


def my_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """This rank's share of :func:`batches`: batch ``k`` goes to rank ``k mod world``. A world
    larger than ``n`` is refused (a rank would have no sample at all)."""
    check_int("--batch-size", batch_size, minimum=1)
    world = rank_world()[1]
    if world > n:
        raise InputValueError(f"torchrun started {world} processes for {n} example(s); allowed: "
                              f"--nproc_per_node <= {n}, or more examples")
    return share(batches(n, batch_size))


def gather_objects(items: list) -> list | None:
    """Every rank's ``items`` (picklable), concatenated in rank order, on rank 0; ``None`` on the
    others. Without a process group, ``items`` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    rank, world = dist.get_rank(), dist.get_world_size()
    received = [None] * world if rank == 0 else None
    try:
        dist.gather_object(list(items), received, dst=0)
    except (RuntimeError, dist.DistBackendError) as err:
        raise RankLost(f"rank {rank}: another rank of the torchrun job stopped before its results "
                       f"were gathered ({str(err).splitlines()[0] if str(err) else err!r}); no "
                       "output written") from err
    return None if rank != 0 else [item for part in received for item in part]


def gather(parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor | None:
    """Concatenate every rank's ``(start, result)`` parts in index order (results on the CPU).
    Returns the whole on rank 0 and ``None`` on the others; without a process group, the whole."""
    everything = gather_objects([(start, x.detach().cpu()) for start, x in parts])
    if everything is None:
        return None
    return torch.cat([x for _, x in sorted(everything, key=lambda p: p[0])])


def share(tasks: list) -> list:
    """This rank's share of independent ``tasks``: task ``k`` on rank ``k mod world``."""
    rank, world = rank_world()
    return tasks[rank::world]
