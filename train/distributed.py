"""The process group and the few collectives the project uses, in one place.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR ...)
and picks NCCL on CUDA, gloo on CPU. Without torchrun it starts a one-process gloo group, so the
same code path (FSDP included) runs under `python -m train`.

Training always has a process group; tools and tests also call checkpoint and evaluation code
without one. The helpers below are the only place that asks (`world_size()`), so a world of one
needs no group and nothing else in the project checks `dist.is_initialized()`.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int = 1800) -> DistInfo:
    """Join (or, without torchrun, create) the default process group."""
    if "RANK" not in os.environ:  # plain `python -m train`: a world of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    warning = restart_store_warning(os.environ)
    if warning and rank == 0:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return DistInfo(rank, world, local_rank, local_world, device)


def restart_store_warning(env) -> str | None:
    """torchrun >= 2.5 hands its workers the rendezvous' own TCPStore with no per-attempt prefix:
    workers it restarts read the previous attempt's addresses and fail to connect (measured with
    torch 2.13; docs/CLUSTERS.md). Said once at start, when a restart is possible at all."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        return ("torchrun --max-restarts with the shared rendezvous store: restarted workers would fail "
                "to connect; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_(t: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    """In place over all ranks (nothing to do alone); returns `t`."""
    if world_size() > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks in one collective (fp64 so token counts stay exact)."""
    return all_reduce_(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank (a barrier that also carries each rank's error)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
