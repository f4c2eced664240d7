"""Examples -> a `Batch` (docs/DESIGN.md): padded to the longest, or packed into rows.

Both layouts give the same per-token losses for the same examples: padding sits on the right and is masked, and a
packed row restarts RoPE positions at 0 per example and gives each example its own document id,
so attention is block-diagonal causal and no token sees another example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.alpaca import IGNORE_INDEX
from data.packing import pack_rows

Example = tuple[Sequence[int], Sequence[int]]  # (tokens, labels) of equal length


@dataclass
class Batch:
    """One micro-batch on the host, as the loader yields it."""

    tokens: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), already shifted; IGNORE_INDEX where there is no target
    positions: torch.Tensor | None  # (B, T) RoPE positions of packed rows; None: 0..T-1
    document_ids: torch.Tensor | None  # (B, T) packed rows: the example each token belongs to
    num_targets: int  # tokens with a target
    num_tokens: int  # real (non-padding) tokens, for throughput
    doc_lens: list[list[int]]  # per row, its examples' lengths in row order; the rest is padding


def _num_targets(labels: torch.Tensor) -> int:
    return int((labels != IGNORE_INDEX).sum())


def _num_tokens(examples) -> int:
    return sum(len(t) for t, _ in examples)


def collate_padded(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad to the longest example of this micro-batch (Stanford's collator)."""
    T = max(len(t) for t, _ in examples)
    tokens = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for b, (t, lab) in enumerate(examples):
        tokens[b, : len(t)] = torch.as_tensor(np.asarray(t, dtype=np.int64))
        labels[b, : len(lab)] = torch.as_tensor(np.asarray(lab, dtype=np.int64))
    return Batch(tokens, labels, None, None, _num_targets(labels), _num_tokens(examples),
                 [[len(t)] for t, _ in examples])


def collate_rows(rows: Sequence[Sequence[Example]], pack_len: int, pad_id: int) -> Batch:
    """One [len(rows), pack_len] batch from explicit rows of examples. Within a row the examples
    get document ids 0, 1, ...; the padding tail gets the next id, so it attends only to itself
    (no all-masked attention row, no NaN) and no real token attends to it."""
    B = len(rows)
    tokens = torch.full((B, pack_len), pad_id, dtype=torch.long)
    labels = torch.full((B, pack_len), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((B, pack_len), dtype=torch.long)
    document_ids = torch.zeros((B, pack_len), dtype=torch.long)
    for b, row in enumerate(rows):
        s = 0
        for doc, (t, lab) in enumerate(row):
            n = len(t)
            if s + n > pack_len:
                raise ValueError(f"row {b} holds more than pack_len={pack_len} tokens")
            tokens[b, s:s + n] = torch.as_tensor(np.asarray(t, dtype=np.int64))
            labels[b, s:s + n] = torch.as_tensor(np.asarray(lab, dtype=np.int64))
            positions[b, s:s + n] = torch.arange(n)
            document_ids[b, s:s + n] = doc
            s += n
        positions[b, s:] = torch.arange(pack_len - s)
        document_ids[b, s:] = len(row)
    return Batch(tokens, labels, positions, document_ids, _num_targets(labels),
                 sum(_num_tokens(row) for row in rows), [[len(t) for t, _ in row] for row in rows])


def collate_packed(examples: Sequence[Example], pack_len: int, pad_id: int) -> Batch:
    """Pack examples in order (next-fit) into rows of pack_len tokens."""
    rows = pack_rows([len(t) for t, _ in examples], pack_len)
    return collate_rows([[examples[i] for i in row] for row in rows], pack_len, pad_id)
