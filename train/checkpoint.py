"""Resumable sharded checkpoints (torch.distributed.checkpoint) and the final consolidated export.

Layout under `<output_dir>/checkpoints/`:

    step_200/            DCP shards + .metadata (model, optimizer), train_state_rank{r}.pt per
                         rank (step, scheduler, data-loader, RNG states), and manifest.json
    .tmp_step_300/       a checkpoint being written; never read by resume, removed at start-up
    step_100.corrupt/    a step_100 that failed verification and was superseded (kept, never deleted)

Why temp + manifest + rename: `dcp.save` writes many files from many ranks; if the job dies half
way the directory is incomplete. Every rank writes into `.tmp_step_N`; the ranks then hash the
files between them and rank 0 writes `manifest.json` (size + SHA-256 of every file, model/manifest.py)
last and renames the directory to `step_N` (atomic on POSIX filesystems, shared ones included).
The rename alone is not enough on shared storage: a quota or a copy can truncate a file *after*
the fact, so a checkpoint counts only when it verifies against its manifest. `resume=auto` takes
the newest one that does and names every one it skipped; keep-K counts only verified ones.

Why every save step ends in an all-gather of errors: a full disk or a read-only directory fails on
one rank only (the one whose file hit the quota); a rank that raised alone would leave the others
waiting in the next collective until the process-group timeout. Agreeing first means every rank
stops with the same one-line message and rank 0 removes the partial directory.

Why the per-rank file: RNG states and the sampler position are per-rank facts, not tensors to
shard; `torch.save` of plain types is read back with `weights_only=True` (nothing executable).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
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
from model.manifest import (
    describe,
    list_files,
    write_manifest,
)
from train.distributed import DistInfo, barrier, broadcast_object, gather_objects
from train.faults import fault_point, faulty_filesystem
from train.parallel import clean_name
from train.verify import ResumeError, checkpoint_problem, prune, verified_checkpoints


def trainable_state(model: torch.nn.Module) -> dict:
    """The trainable part of the model's state: all of it for full fine-tuning, the adapters for
    LoRA (the frozen base is `model.init_from`, recorded in the train state, not copied)."""
    return get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=True))


def set_trainable_state(model: torch.nn.Module, state: dict) -> None:
    frozen = any(not p.requires_grad for p in model.parameters())
    set_model_state_dict(model, state, options=StateDictOptions(strict=not frozen))


class SaveError(RuntimeError):
    """A checkpoint could not be written (full disk, quota, permissions); one line, exit 1."""

    fatal = False  # stops the run even with on_error=warn (training could not go on safely)


def _one_line(e: BaseException) -> str:
    """OSError says what and where ("[Errno 28] No space left on device: '...'"); DCP wraps the
    failing ranks' exceptions in a CheckpointException whose str is a multi-line traceback."""
    if isinstance(e, CheckpointException) and e.failures:
        rank, (inner, _) = sorted(e.failures.items())[0]
        return f"rank {rank}: {_one_line(inner)}"
    return " ".join(f"{type(e).__name__}: {e}".split()) if not isinstance(e, OSError) else " ".join(str(e).split())


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
def _fail_together(local: BaseException | None, what: str, info: DistInfo, root: Path, final: Path, tmp: Path) -> None:
    """Collective: if any rank failed `what`, every rank raises the same SaveError (rank 0 first
    removes the partial directory; earlier checkpoints are never touched)."""
    mine = None if local is None else (_one_line(local) if isinstance(local, CheckpointException)
                                       else f"rank {info.rank}: {_one_line(local)}")
    errors = [e for e in gather_objects(mine) if e]
    if not errors:
        return
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    good = verified_checkpoints(root)
    newest = f"newest good checkpoint {good[-1][1]}" if good else "no good checkpoint yet"
    raise SaveError(f"saving checkpoint {final.name} failed while {what} ({errors[0]}); removed the partial "
                    f"{tmp.name}; {newest}; fix the storage, then rerun with resume=auto")


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry itself), where the OS allows opening a dir."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _set_aside(path: Path, suffix: str) -> Path:
    """Rename a checkpoint out of the `step_N` namespace (`step_N.corrupt`, `.corrupt1`, ...)."""
    target = path.with_name(path.name + suffix)
    i = 1
    while target.exists():
        target, i = path.with_name(f"{path.name}{suffix}{i}"), i + 1
    os.replace(path, target)
    return target


def _begin(root: Path, step: int, info: DistInfo) -> tuple[Path, Path]:
    """Collective: rank 0 creates an empty `.tmp_step_N`; returns (final, tmp)."""
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    err: BaseException | None = None
    if info.is_main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except Exception as e:
            err = e
    _fail_together(err, "creating the directory", info, root, final, tmp)
    return final, tmp


def _writer(tmp: Path, step: int, info: DistInfo) -> FileSystemWriter:
    writer = FileSystemWriter(str(tmp))
    writer.fs = faulty_filesystem(step, info.rank) or writer.fs  # tests only (train/faults.py)
    return writer


def _write_train_state(tmp: Path, train_state: dict[str, Any], info: DistInfo) -> None:
    part = tmp / f"train_state_rank{info.rank}.pt"
    torch.save({**train_state, "world_size": info.world_size}, str(part) + ".part")
    os.replace(str(part) + ".part", part)


def _commit(root: Path, step: int, final: Path, tmp: Path, entries: dict, err: BaseException | None,
            info: DistInfo, keep: int) -> Path:
    """Collective: gather the ranks' hashes, then rank 0 writes the manifest last, renames
    `.tmp_step_N` to `step_N` and prunes to the newest `keep` verified checkpoints."""
    files = {k: v for part in gather_objects(entries) for k, v in part.items()}
    _fail_together(err, "hashing the files", info, root, final, tmp)
    if info.is_main:
        try:
            # A file no rank listed (an asynchronous save lists on each rank; a listing on another
            # node may lag) is hashed here, so the manifest always covers the whole directory.
            files.update(describe(tmp, [n for n in list_files(tmp) if n not in files]))
            write_manifest(tmp, files, step=step, world_size=info.world_size)
            fault_point("kill_in_save", step, info.rank)  # tests only: the worst moment to die
            replaced = None
            if final.exists():  # the same step again (a resumed run passing a step it saved before)
                # Renamed away first, deleted only after the new one is in place and only if it
                # verifies: evidence of what went wrong is never deleted.
                good = checkpoint_problem(final, checksums=True, local=True) is None
                replaced = _set_aside(final, ".replaced" if good else ".corrupt"), good
            os.replace(tmp, final)
            _fsync_dir(root)
            if replaced and replaced[1]:
                shutil.rmtree(replaced[0], ignore_errors=True)
        except Exception as e:
            err = e
    _fail_together(err, "committing the manifest", info, root, final, tmp)
    if info.is_main:
        prune(root, keep)
    barrier()
    return final


def save(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         train_state: dict[str, Any], info: DistInfo, keep: int) -> Path:
    """Write `step_N` atomically (every rank calls this), then drop all but the newest `keep`
    verified checkpoints. Raises SaveError on every rank if any rank failed."""
    final, tmp = _begin(root, step, info)
    err: BaseException | None = None
    try:
        state = {"model": trainable_state(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, storage_writer=_writer(tmp, step, info))
        _write_train_state(tmp, train_state, info)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        err = e
    _fail_together(err, "writing the shards", info, root, final, tmp)

    # Hash the files between the ranks (rank 0 lists them: on shared storage a listing on
    # another node may lag), then rank 0 writes the manifest last and renames.
    names = broadcast_object(list_files(tmp) if info.is_main else None)
    entries: dict = {}
    try:
        entries = describe(tmp, names[info.rank::info.world_size])
    except Exception as e:
        err = e
    return _commit(root, step, final, tmp, entries, err, info, keep)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """Restore model and optimizer shards in place; return this rank's train state.

    DCP reshards on load, and the data-loader state counts examples consumed by all ranks, so a
    checkpoint also resumes on another number of ranks (keep the global batch: e.g. 8 GPUs x
    accumulation 4 -> 4 GPUs x accumulation 8). Only the per-rank RNG states then do not carry
    over (training itself draws no random numbers; they matter for dropout-like additions).
    A file that cannot be read (verification skipped, or corrupted since) is a ResumeError on
    every rank, naming the file."""
    part = path / f"train_state_rank{info.rank}.pt"
    if not part.is_file():
        part = path / "train_state_rank0.pt"
    train_state, problem = None, None
    try:
        train_state = torch.load(part, weights_only=True)
    except Exception as e:
        problem = f"{part}: cannot read ({_one_line(e)})"
    problems = [p for p in gather_objects(problem) if p]
    if problems:
        raise ResumeError(f"resume: {problems[0]}")
    if train_state["world_size"] != info.world_size:
        train_state.pop("rng", None)
    # get_optimizer_state_dict initialises empty AdamW state (lr 0 dummy step) so DCP has
    # tensors of the right shapes to load into.
    state = {"model": trainable_state(model), "optim": get_optimizer_state_dict(model, optimizer)}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as e:  # raised on every rank by DCP itself
        raise ResumeError(f"resume: {path}: cannot load the shards ({_one_line(e)})") from None
    set_trainable_state(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    return train_state


def load_pretrained(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Fill a sharded model from a full state dict held by rank 0 (others pass {}): rank 0 reads
    the file once and broadcasts, instead of every rank holding a 7B copy in host memory."""
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


# ---------------------------------------------------------------- export
def _gathered(model: torch.nn.Module, info: DistInfo) -> Iterator[tuple[str, torch.Tensor]]:
    """Every rank walks the same tensors (full_tensor() is a collective); only rank 0 keeps each
    gathered tensor, moved to host memory before the next one is gathered."""
    for name, t in model.state_dict().items():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if info.is_main:
            yield clean_name(name), full.detach().to("cpu")
        del full


def export(model: torch.nn.Module, args: ModelArgs, out_dir: Path, tokenizer_path: str | None,
           dtype: torch.dtype, info: DistInfo, adapter_info: dict | None = None) -> Path:
    """The consolidated project checkpoint (safetensors + config.json + tokenizer.model +
    manifest.json, temp dir + rename). Rank 0 writes; if its write fails (full disk), it keeps
    walking the tensors so the other ranks' gathers complete, then every rank raises SaveError.

    A LoRA model is exported merged (W + scale B A in fp32, then cast; an NF4 base dequantised
    first), so every tool reads it as a plain LLaMA; the adapters alone are kept beside it in
    `adapter.safetensors` + `adapter.json` (`adapter_info`), which `tools.convert to-peft` reads."""
    tensors = _gathered(model, info)
    extra = None
    if adapter_info is not None:
        from model import lora

        adapters: dict[str, torch.Tensor] = {}
        tensors = lora.merge_stream(lora.kept_adapters(tensors, adapters), lora.scales(model, clean_name))
        extra = lora.adapter_files(adapters, adapter_info)
    err: BaseException | None = None
    if info.is_main:
        try:
            save_checkpoint(tensors, args, out_dir, tokenizer_path=tokenizer_path, dtype=dtype, extra_files=extra)
        except Exception as e:
            err = e
    for _ in tensors:  # the rest of the collectives (all of them on ranks > 0)
        pass
    errors = [e for e in gather_objects(None if err is None else _one_line(err)) if e]
    if errors:
        good = verified_checkpoints(out_dir.parent / "checkpoints")
        newest = f"newest good checkpoint {good[-1][1]}" if good else "no resumable checkpoint (checkpoint.every=0?)"
        raise SaveError(f"exporting {out_dir} failed ({errors[0]}); no partial {out_dir.name} left; {newest}; "
                        "fix the storage, then rerun with resume=auto")
    return out_dir
