"""Resumable sharded checkpoints (torch.distributed.checkpoint) and the final consolidated export.

Layout under `<output_dir>/checkpoints/`:

    step_200/            a complete checkpoint: DCP shards + .metadata (model, optimizer),
                         train_state_rank{r}.pt per rank (step, scheduler, data-loader, RNG states)
    .tmp_step_300/       a checkpoint being written; never read by resume, removed at start-up

Why temp + rename: `dcp.save` writes many files from many ranks; if the job dies half way the
directory is incomplete. Every rank writes into `.tmp_step_N`, all ranks meet at a barrier, and
only then rank 0 renames it to `step_N` (an atomic rename on POSIX filesystems, shared ones
included). So a `step_N` directory is complete by construction and `resume=auto` simply takes
the highest N.

Why the per-rank file: RNG states and the sampler position are per-rank facts, not tensors to
shard; `torch.save` of plain types is read back with `weights_only=True` (nothing executable).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from model.args import ModelArgs
from model.checkpoint import save_checkpoint
from train.faults import fault_point
from train.parallel import DistInfo, clean_name

STEP_RE = re.compile(r"^step_(\d+)$")


class ResumeError(ValueError):
    """The requested checkpoint cannot be resumed (missing, incomplete, other world size)."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------- discovery
def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def resolve_resume(resume: str, root: Path) -> Path | None:
    """none -> None; auto -> newest complete checkpoint (or None on a fresh run); else a path."""
    if resume == "none":
        found = complete_checkpoints(root)
        if found:  # a fresh run would mix its checkpoints with (and prune) the earlier run's
            raise ResumeError(f"{root} already holds checkpoints of an earlier run (newest {found[-1][1].name}): "
                              "pass resume=auto to continue it, or use another output_dir")
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / ".metadata").is_file():
        raise ResumeError(f"resume: no complete checkpoint at {path} (expected a checkpoints/step_N dir)")
    return path


def clean_partial(root: Path) -> None:
    """Remove leftovers of a save that was interrupted (rank 0, at start-up)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp_step_"):
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- RNG
def rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------- save / load
def save(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         train_state: dict[str, Any], info: DistInfo, keep: int) -> Path:
    """Write `step_N` atomically (every rank calls this), then drop all but the newest `keep`."""
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(tmp))
    part = tmp / f"train_state_rank{info.rank}.pt"
    torch.save({**train_state, "world_size": info.world_size}, str(part) + ".part")
    os.replace(str(part) + ".part", part)
    _barrier()
    if info.is_main:
        fault_point("kill_in_save", step, info.rank)  # tests only: the worst moment to die
        if final.exists():  # re-saving the same step (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """Restore model and optimizer shards in place; return this rank's train state.

    DCP reshards on load, and the data-loader state counts examples consumed by all ranks, so a
    checkpoint also resumes on another number of ranks (keep the global batch: e.g. 8 GPUs x
    accumulation 4 -> 4 GPUs x accumulation 8). Only the per-rank RNG states then do not carry
    over (training itself draws no random numbers; they matter for dropout-like additions)."""
    part = path / f"train_state_rank{info.rank}.pt"
    same_world = part.is_file()
    train_state = torch.load(part if same_world else path / "train_state_rank0.pt", weights_only=True)
    if train_state["world_size"] != info.world_size:
        train_state.pop("rng", None)
    # get_optimizer_state_dict initialises empty AdamW state (lr 0 dummy step) so DCP has
    # tensors of the right shapes to load into.
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    return train_state


def load_pretrained(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Fill a sharded model from a full state dict held by rank 0 (others pass {}): rank 0 reads
    the file once and broadcasts, instead of every rank holding a 7B copy in host memory."""
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


# ---------------------------------------------------------------- export
def _gathered(model: torch.nn.Module, dtype: torch.dtype, info: DistInfo) -> Iterator[tuple[str, torch.Tensor]]:
    """Every rank walks the same tensors (full_tensor() is a collective); only rank 0 keeps each
    gathered tensor, moved to host memory before the next one is gathered."""
    for name, t in model.state_dict().items():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if info.is_main:
            yield clean_name(name), full.detach().to("cpu", dtype=dtype)
        del full


def export(model: torch.nn.Module, args: ModelArgs, out_dir: Path, tokenizer_path: str | None,
           dtype: torch.dtype, info: DistInfo) -> Path:
    """The consolidated project checkpoint (safetensors + config.json + tokenizer.model)."""
    if info.is_main:
        save_checkpoint(_gathered(model, dtype, info), args, out_dir, tokenizer_path=tokenizer_path)
    else:
        for _ in _gathered(model, dtype, info):
            pass
    _barrier()
    return out_dir
