"""The training set: several tokenized files mixed by weight into one indexable set."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from data.alpaca import IGNORE_INDEX, DataError
from data.cache import TokenizedFile, load_tokenized
from data.config import DataConfig


def mixture_index(sizes: list[int], weights: list[float], seed: int) -> np.ndarray:
    """Example ids (into the concatenation of the files) for one epoch's worth of data.

    A weight w takes floor(w) full copies of a file plus a seeded subset of round(frac(w) * n)
    examples. The index is fixed for the run (the sampler reshuffles it every epoch), so a
    fractional weight trains on the same subset each epoch, like a pre-subsampled file would.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    start, parts = 0, []
    for n, w in zip(sizes, weights, strict=True):
        ids = np.arange(start, start + n, dtype=np.int64)
        whole, frac = int(w), w - int(w)
        parts.extend([ids] * whole)
        k = int(round(frac * n))
        if k:
            parts.append(np.sort(rng.choice(ids, size=k, replace=False)))
        start += n
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class AlpacaDataset:
    """Indexable (tokens, labels) examples; `lengths[i]` is example i's token count (seq - 1)."""

    def __init__(self, files: list[TokenizedFile], weights: list[float] | None = None, seed: int = 0):
        self.files = files
        sizes = [len(f) for f in files]
        bases = np.concatenate([[0], np.cumsum([len(f.seqs) for f in files])])[:-1]
        self.seqs = np.concatenate([f.seqs for f in files])  # kept in the cache's compact dtype
        self.offsets = np.concatenate([f.offsets[:-1] + b for f, b in zip(files, bases, strict=True)] + [[len(self.seqs)]])
        self.prompt_lens = np.concatenate([f.prompt_lens for f in files]).astype(np.int64)
        self.index = mixture_index(sizes, weights or [1.0] * len(files), seed)
        self.lengths = (np.diff(self.offsets) - 1)[self.index]
        blob = json.dumps([[f.meta["key"] for f in files], weights, seed])
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        j = self.index[i]
        seq = self.seqs[self.offsets[j]:self.offsets[j + 1]].astype(np.int64)
        labels = seq[1:].copy()
        labels[: self.prompt_lens[j] - 1] = IGNORE_INDEX
        return seq[:-1], labels

    @property
    def stats(self) -> dict:
        """Counts summed over files: records read, skipped (invalid), dropped (prompt reaches
        max_len), truncated, examples (after mixing), and per-file detail."""
        keys = ("records", "skipped", "dropped", "truncated")
        out = {k: sum(f.meta[k] for f in self.files) for k in keys}
        out["examples"] = len(self)
        out["files"] = [{"path": f.meta["path"], "examples": len(f), **{k: f.meta[k] for k in keys}}
                        for f in self.files]
        return out


def load_dataset(cfg: DataConfig, tokenizer, seed: int = 0) -> AlpacaDataset:
    if not cfg.paths:
        raise DataError(f"data.paths: no data files (source {cfg.source!r} must fill them in before loading)")
    files = [load_tokenized(p, tokenizer, cfg.template, cfg.max_len, cfg.cache_dir, cfg.num_proc,
                            cfg.skip_invalid) for p in cfg.paths]
    return AlpacaDataset(files, cfg.weights, seed)
