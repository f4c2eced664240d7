"""The project checkpoint: a directory with `config.json` (ModelArgs), safetensors weights (one
`model.safetensors`, or `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`
above `max_shard_bytes`) and `tokenizer.model`.

Saving streams (name, tensor) pairs into shards, so an exporter that gathers one tensor at a time
never holds the whole model; the directory is written under a temporary name and renamed, so a
crash never leaves a half checkpoint. Loading builds the model on the meta device and fills it
tensor by tensor, so a 7B load never holds two copies in memory.

`manifest.json` (model/manifest.py), written last inside the temporary directory, records the
size and SHA-256 of every file; readers check it before trusting the weights, so a truncated or
altered file is named in one line instead of failing inside safetensors (or loading silently
wrong numbers). Directories without one (HF downloads, older exports) are read as before.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.args import ModelArgs
from model.llama import Transformer
from model.manifest import MANIFEST_NAME, ManifestError, verify, write_manifest

CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.model"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A user-facing problem with a checkpoint; the message is one line naming file and tensor."""


def atomic_dir(final: Path) -> Path:
    """A fresh temporary directory beside `final` (same filesystem, so the rename is atomic)."""
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace `final` with `tmp`: the old directory stays intact until the new one is complete."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_shards(tensors: Iterable[tuple[str, torch.Tensor]], directory: Path,
                 max_shard_bytes: int = 5 * 1024**3) -> None:
    """Stream (name, tensor) pairs into `directory`: one `model.safetensors`, or HF-style
    `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json` when they exceed
    `max_shard_bytes`. Only one shard is held in memory. Shared by save_checkpoint and the HF
    exporter (tools/convert.py to-hf), which use the same file layout."""
    shard_files: list[str] = []
    weight_map: dict[str, int] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = total_bytes = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"shard-{len(shard_files):05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            shard_files.append(name)
            shard, shard_bytes = {}, 0

    for name, t in tensors:
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if shard and shard_bytes + nbytes > max_shard_bytes:
            flush()
        shard[name] = t
        weight_map[name] = len(shard_files)
        shard_bytes += nbytes
        total_bytes += nbytes
    flush()

    if len(shard_files) == 1:
        os.replace(directory / shard_files[0], directory / SINGLE_NAME)
    else:  # HF-style names, known only once the shard count is
        n = len(shard_files)
        final_names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for old, new in zip(shard_files, final_names, strict=True):
            os.replace(directory / old, directory / new)
        index = {"metadata": {"total_size": total_bytes},
                 "weight_map": {k: final_names[i] for k, i in weight_map.items()}}
        _write_json(directory / INDEX_NAME, index)


def save_checkpoint(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    args: ModelArgs,
    out_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    dtype: torch.dtype | None = None,
    extra_files: Mapping[str, Callable[[], bytes]] | None = None,
) -> Path:
    """Write a project checkpoint; `tensors` may be a generator (one gathered tensor at a time).
    `extra_files`: name -> its bytes, asked for after the tensors are written (a LoRA run's
    adapter, collected while the merged weights stream past), covered by the manifest."""
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_dir(final)
    try:
        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        write_shards(((n, t.to(dtype or t.dtype)) for n, t in items), tmp, max_shard_bytes)
        _write_json(tmp / CONFIG_NAME, args.to_dict())
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / TOKENIZER_NAME)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content())
        write_manifest(tmp)  # last: its presence says every other file is complete
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_args(ckpt_dir: str | os.PathLike) -> ModelArgs:
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {ckpt_dir} a project checkpoint?)")
    try:
        return ModelArgs.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _open(fname: str):
    """safe_open with the file named in the error (safetensors' own message omits it)."""
    try:
        return safe_open(fname, framework="pt")
    except Exception as e:  # SafetensorError, OSError: a corrupt or truncated file
        raise CheckpointError(f"{fname}: cannot read safetensors ({e})") from None


def verify_dir(ckpt_dir: str | os.PathLike, checksums: bool = True) -> None:
    """Check `ckpt_dir` against its manifest when it has one (sizes; SHA-256 unless `checksums`
    is False, which skips reading every byte twice for a huge checkpoint)."""
    if (Path(ckpt_dir) / MANIFEST_NAME).is_file():
        try:
            verify(Path(ckpt_dir), checksums=checksums)
        except ManifestError as e:
            raise CheckpointError(str(e)) from None


def weight_files(ckpt_dir: str | os.PathLike) -> dict[str, list[str]]:
    """file path -> tensor names it should hold (from the index when sharded)."""
    d = Path(ckpt_dir)
    if (d / INDEX_NAME).is_file():
        weight_map = json.loads((d / INDEX_NAME).read_text())["weight_map"]
        files: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            files.setdefault(str(d / fname), []).append(name)
        for f in files:
            if not Path(f).is_file():
                raise CheckpointError(f"{f}: shard listed in {d / INDEX_NAME} is missing")
        return files
    if (d / SINGLE_NAME).is_file():
        with _open(str(d / SINGLE_NAME)) as f:
            return {str(d / SINGLE_NAME): list(f.keys())}
    raise CheckpointError(f"{d}: no {SINGLE_NAME} or {INDEX_NAME}")


def iter_tensors(ckpt_dir: str | os.PathLike, checksums: bool = True) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield (file, name, tensor) one tensor at a time (safetensors memory-maps the files),
    after checking the directory against its manifest."""
    verify_dir(ckpt_dir, checksums)
    for fname, names in weight_files(ckpt_dir).items():
        with _open(fname) as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{fname}: tensor '{name}' listed in the index is missing")
                yield fname, name, f.get_tensor(name)


def load_state_dict(ckpt_dir: str | os.PathLike, checksums: bool = True) -> dict[str, torch.Tensor]:
    return {name: t for _, name, t in iter_tensors(ckpt_dir, checksums)}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, checksums: bool = True) -> Transformer:
    """Build on the meta device (no memory), then assign each tensor as it is read."""
    verify_dir(path, checksums)  # before config.json is trusted too
    args = load_args(path)
    with torch.device("meta"):
        model = Transformer(args)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    seen: set[str] = set()
    for fname, name, t in iter_tensors(path, checksums=False):  # verified just above
        if name not in expected:
            raise CheckpointError(f"{fname}: unexpected tensor '{name}' for this config")
        if tuple(t.shape) != tuple(expected[name]):
            raise CheckpointError(f"{fname}: tensor '{name}' has shape {tuple(t.shape)}, "
                                  f"config.json implies {tuple(expected[name])}")
        model.load_state_dict({name: t.to(device=device, dtype=dtype)}, strict=False, assign=True)
        seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{path}: missing tensor '{missing[0]}'"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return model.eval()
