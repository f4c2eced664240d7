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


# --- the parallel build: forked workers encode spans of the records -------------------------
_worker_state: tuple = ()


def _init_worker(tokenizer, records: list[dict], template) -> None:
    global _worker_state
    _worker_state = (tokenizer, records, template)  # inherited through fork, never pickled


Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # (all sequences flat, lengths, prompt lengths)


def _encode_records(tokenizer, records: list[dict], template) -> Encoded:
    seqs, plens = zip(*(encode_example(tokenizer, r, template) for r in records), strict=True)
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(lens.sum()))
    return flat, lens, np.asarray(plens, dtype=np.int64)


def _encode_chunk(span: tuple[int, int]) -> Encoded:
    tokenizer, records, template = _worker_state
    return _encode_records(tokenizer, records[span[0]:span[1]], template)  # arrays: cheap to send back


def encode_all(tokenizer, records: list[dict], template, num_proc: int) -> Encoded:
    """encode_example over all records, in order, with num_proc processes. Workers are forked:
    they inherit the tokenizer and re-import nothing (spawn would re-run the caller's main
    module); they only run sentencepiece and pickling, never torch, so the parent's threads
    (gloo, CUDA) are no hazard to them."""
    if num_proc <= 1 or len(records) < 256:
        return _encode_records(tokenizer, records, template)
    n_chunks = num_proc * 4
    size = -(-len(records) // n_chunks)
    spans = [(i, min(i + size, len(records))) for i in range(0, len(records), size)]
    with ProcessPoolExecutor(num_proc, mp_context=get_context("fork"), initializer=_init_worker,
                             initargs=(tokenizer, records, template)) as pool:
        parts = list(pool.map(_encode_chunk, spans))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def build_arrays(encoded: Encoded, indices: list[int], max_len: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Cut every sequence to max_len and drop those whose prompt alone reaches it."""
    flat, lens, plens = encoded
    keep = plens < max_len
    cut = np.where(keep, np.minimum(lens, max_len), 0)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    within = np.arange(len(flat)) - np.repeat(starts, lens)  # position of each token in its sequence
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    return {
        "seqs": flat[within < np.repeat(cut, lens)].astype(dtype),
        "offsets": np.concatenate([[0], np.cumsum(cut[keep])]).astype(np.int64),
        "prompt_lens": plens[keep].astype(np.int32),
        "truncated": (lens > max_len)[keep],
        "record_index": np.asarray(indices, dtype=np.int64)[keep],
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
