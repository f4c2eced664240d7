"""Random (tokens, labels) examples for the packing and packed-attention tests: [BOS] + random
ids + [EOS], shifted, with a random-length prompt masked as -100."""

from __future__ import annotations

import torch

M = -100


def random_examples(n: int, vocab: int = 50, seed: int = 0, max_len: int = 21) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, max_len, (1,), generator=g))
        seq = [1] + torch.randint(3, vocab, (length,), generator=g).tolist() + [2]
        n_prompt = int(torch.randint(1, length, (1,), generator=g))
        labels = seq[1:]
        labels[: n_prompt - 1] = [M] * (n_prompt - 1)
        out.append((seq[:-1], labels))
    return out
