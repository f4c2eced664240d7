"""Tokenize once: per-file numpy caches, built in parallel, shared across runs and ranks.

A file's cache is a directory of .npy arrays
    seqs         the truncated sequences ([BOS] + prompt + output + [EOS])[:max_len], concatenated
    offsets      int64 [n + 1]: example i is seqs[offsets[i]:offsets[i + 1]]
    prompt_lens  int32 [n]: prompt tokens including BOS (the labels to mask, plus one)
    truncated    bool [n]: the cut removed tokens
    record_index int64 [n]: the example's record in the file (dropped and skipped ones missing)
plus meta.json with the counts. Its name hashes everything that changes the arrays (data bytes,
tokenizer bytes, template text, max_len, format version), so a stale cache is never read and an
edited file simply gets a new one. Writes go to a temp dir renamed into place: a crash leaves
no half cache and concurrent builders (two nodes' rank 0 on a shared disk) cannot corrupt one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from data.alpaca import encode_example, read_records
from data.prompts import get_template, template_name

FORMAT_VERSION = 1
_ARRAYS = ("seqs", "offsets", "prompt_lens", "truncated", "record_index")


@dataclass
class TokenizedFile:
    seqs: np.ndarray
    offsets: np.ndarray
    prompt_lens: np.ndarray
    truncated: np.ndarray
    record_index: np.ndarray
    meta: dict  # path, records, skipped, dropped, truncated, examples, key

    def __len__(self) -> int:
        return len(self.prompt_lens)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(data_sha: str, tokenizer_sha: str, template, max_len: int) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, "data": data_sha, "tok": tokenizer_sha,
                       "template": get_template(template), "max_len": max_len}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- the parallel build: each worker process loads its own tokenizer once ---------------------
_worker_tok = None


def _init_worker(tokenizer) -> None:
    global _worker_tok
    _worker_tok = tokenizer


def _encode_chunk(args) -> list[tuple[list[int], int]]:
    records, template = args
    return [encode_example(_worker_tok, r, template) for r in records]


def encode_all(tokenizer, records: list[dict], template, num_proc: int) -> list[tuple[list[int], int]]:
    """encode_example over all records, in order, with num_proc processes. Workers are forked:
    they inherit the tokenizer and re-import nothing (spawn would re-run the caller's main
    module); they only run sentencepiece and pickling, never torch, so the parent's threads
    (gloo, CUDA) are no hazard to them."""
    if num_proc <= 1 or len(records) < 256:
        return [encode_example(tokenizer, r, template) for r in records]
    n_chunks = num_proc * 4
    size = -(-len(records) // n_chunks)
    chunks = [(records[i:i + size], template) for i in range(0, len(records), size)]
    with ProcessPoolExecutor(num_proc, mp_context=get_context("fork"), initializer=_init_worker,
                             initargs=(tokenizer,)) as pool:
        return [ex for part in pool.map(_encode_chunk, chunks) for ex in part]


def build_arrays(encoded: list[tuple[list[int], int]], indices: list[int], max_len: int,
                 vocab_size: int) -> dict[str, np.ndarray]:
    """Cut every sequence to max_len and drop those whose prompt alone reaches it."""
    keep = [(seq, p, i) for (seq, p), i in zip(encoded, indices, strict=True) if p < max_len]
    lens = np.array([min(len(seq), max_len) for seq, _, _ in keep], dtype=np.int64)
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    seqs = np.fromiter((t for seq, _, _ in keep for t in seq[:max_len]), dtype=dtype, count=int(lens.sum()))
    return {
        "seqs": seqs,
        "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        "prompt_lens": np.array([p for _, p, _ in keep], dtype=np.int32),
        "truncated": np.array([len(seq) > max_len for seq, _, _ in keep], dtype=bool),
        "record_index": np.array([i for _, _, i in keep], dtype=np.int64),
    }


def _save(arrays: dict[str, np.ndarray], meta: dict, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", arrays[name])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, final)  # atomic; fails if another builder got there first, which is fine
    except OSError:
        if not (final / "meta.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(final: Path) -> TokenizedFile:
    arrays = {name: np.load(final / f"{name}.npy") for name in _ARRAYS}
    return TokenizedFile(**arrays, meta=json.loads((final / "meta.json").read_text()))


def _dist_info() -> tuple[bool, bool]:
    """(distributed, this process builds). One builder per node (LOCAL_RANK 0): correct on a
    shared disk (atomic rename) and on node-local disks alike."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return False, True
    return True, int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0


def load_tokenized(path: str, tokenizer, template="alpaca", max_len: int = 512,
                   cache_dir: str | None = ".cache/data", num_proc: int = 2,
                   skip_invalid: bool = False) -> TokenizedFile:
    """The tokenized examples of one file, from the cache or built (and cached) now.

    Every rank reads and validates the file (cheap, and a bad record then stops every rank with
    the same message instead of leaving some waiting at the barrier); only the builder encodes.
    """
    path = str(path)
    records, indices, skipped = read_records(path, skip_invalid)
    key = cache_key(sha256_file(path), sha256_file(tokenizer.path), template, max_len)
    final = Path(cache_dir) / f"{Path(path).stem}-{key[:16]}" if cache_dir else None
    meta = {"path": path, "key": key, "template": template_name(template), "max_len": max_len,
            "records": len(records) + len(skipped), "skipped": len(skipped)}

    def build() -> TokenizedFile:
        arrays = build_arrays(encode_all(tokenizer, records, template, num_proc), indices, max_len,
                              tokenizer.vocab_size)
        full = {**meta, "examples": len(arrays["prompt_lens"]),
                "dropped": len(records) - len(arrays["prompt_lens"]),
                "truncated": int(arrays["truncated"].sum())}
        if final is not None:
            _save(arrays, full, final)
        return TokenizedFile(**arrays, meta=full)

    if final is None:
        return build()
    distributed, builder = _dist_info()
    out = None
    if builder and not (final / "meta.json").is_file():
        out = build()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    if out is None:
        out = _load(final)
    out.meta.update(skipped=len(skipped), records=len(records) + len(skipped))
    return out
