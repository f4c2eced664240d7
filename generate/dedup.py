"""ROUGE-L near-duplicate filter that stays fast at Alpaca's 52K scale.

Alpaca scores every candidate against every kept instruction with a fresh process pool per
candidate: quadratic work plus a pool start-up and a full pickle of the pool per candidate.
Here the decisions are the same (a candidate is rejected iff its ROUGE-L F against some kept
instruction exceeds the threshold, computed by rouge-score's own LCS), but:

- each instruction is tokenized once, when it is added;
- a cheap upper bound rules out most pairs without an LCS. The LCS of two token sequences is
  at most the size of their multiset intersection, so F = 2*LCS/(|a|+|b|) is at most
  2*|a ∩ b|/(|a|+|b|). The intersections against the whole pool come from an inverted index
  (token -> postings of (instruction id, count)) in a few numpy operations per token;
- the exact LCS (bit-parallel, equal to rouge-score's, see generate/rouge.py) runs only on
  pairs whose bound exceeds the threshold, best bound first, and stops at the first proof of a
  duplicate;
- when many pairs survive the bound, they are scored by one persistent worker pool, created
  once for the whole run.
"""

from __future__ import annotations

import heapq
import multiprocessing
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from generate.rouge import LcsQuery, tokenize

# The bound is computed in floats like rouge-score's F; never skip a pair whose bound is within
# this margin of the threshold, so rounding can only cost an extra LCS, never a wrong decision.
_MARGIN = 1e-9


@dataclass
class Decision:
    """Outcome of one check: `match` is the pool index that proved a duplicate (or None)."""

    accepted: bool
    tokens: list[str]
    score: float = 0.0
    match: int | None = None
    most_similar: list[tuple[int, float]] = field(default_factory=list)
    avg_similarity: float = 0.0


def _score_chunk(task: tuple[list[str], list[tuple[int, list[str]]]]) -> list[tuple[int, float]]:
    """Worker: exact ROUGE-L of one candidate against a chunk of pool members."""
    cand, members = task
    query = LcsQuery(cand)
    return [(i, query.f(toks)) for i, toks in members]


class RougeDedup:
    """The pool of kept instructions and the near-duplicate test against it."""

    def __init__(self, threshold: float = 0.7, workers: int = 0, top_k: int = 10,
                 avg_sample: int = 256, parallel_min_pairs: int = 2048, chunk: int = 512) -> None:
        self.threshold = threshold
        self.workers = workers
        self.top_k = top_k
        self.avg_sample = avg_sample
        self.parallel_min_pairs = parallel_min_pairs
        self.chunk = chunk
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        self._vocab: dict[str, int] = {}
        self._post_ids: list[array] = []  # per token id: pool indices containing it
        self._post_cnt: list[array] = []  # per token id: how often it occurs there
        self._lengths = np.zeros(1024, dtype=np.int64)
        self._pool = None

    def __len__(self) -> int:
        return len(self.texts)

    # -- building the pool ---------------------------------------------------------------------

    def add(self, text: str, tokens: list[str] | None = None) -> int:
        """Add a kept instruction (tokens reused from `check` when given); returns its index."""
        tokens = tokenize(text) if tokens is None else tokens
        idx = len(self.texts)
        self.texts.append(text)
        self.tokens.append(tokens)
        if idx >= len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        self._lengths[idx] = len(tokens)
        for tok, count in Counter(tokens).items():
            tid = self._vocab.get(tok)
            if tid is None:
                tid = self._vocab[tok] = len(self._post_ids)
                self._post_ids.append(array("i"))
                self._post_cnt.append(array("i"))
            self._post_ids[tid].append(idx)
            self._post_cnt[tid].append(count)
        return idx

    # -- scoring -------------------------------------------------------------------------------

    def _bounds(self, tokens: list[str]) -> np.ndarray:
        """Upper bound on ROUGE-L F of `tokens` against every pool member (float64[n])."""
        n = len(self.texts)
        inter = np.zeros(n, dtype=np.int64)
        for tok, count in Counter(tokens).items():
            tid = self._vocab.get(tok)
            if tid is None:
                continue
            ids = np.frombuffer(self._post_ids[tid], dtype=np.int32)
            cnt = np.frombuffer(self._post_cnt[tid], dtype=np.int32)
            inter[ids] += np.minimum(cnt, count)  # ids are unique within one posting list
        return 2.0 * inter / (len(tokens) + self._lengths[:n])

    def _candidates(self, bounds: np.ndarray, floor: float) -> np.ndarray:
        """Pool indices whose bound exceeds `floor`, best bound first (ties by index)."""
        idx = np.nonzero(bounds > floor - _MARGIN)[0]
        return idx[np.lexsort((idx, -bounds[idx]))]

    def _exact(self, query: LcsQuery, indices) -> list[tuple[int, float]]:
        """Exact scores for `indices`; through the persistent pool when there are many."""
        if self.workers > 0 and len(indices) >= self.parallel_min_pairs:
            pool = self._get_pool()
            tasks = [(query.tokens, [(int(i), self.tokens[i]) for i in indices[s:s + self.chunk]])
                     for s in range(0, len(indices), self.chunk)]
            return [pair for part in pool.map(_score_chunk, tasks) for pair in part]
        return [(int(i), query.f(self.tokens[i])) for i in indices]

    def _first_duplicate(self, query: LcsQuery, order: np.ndarray) -> tuple[int, float] | None:
        """The first pool member (in bound order) scoring above the threshold, if any."""
        step = self.parallel_min_pairs if self.workers > 0 else len(order)
        step = max(step, 1)
        for s in range(0, len(order), step):
            for i, score in self._exact(query, order[s:s + step]):
                if score > self.threshold:
                    return i, score
        return None

    def _top_k(self, query: LcsQuery, bounds: np.ndarray) -> list[tuple[int, float]]:
        """Exact top-k most similar members; stops once no remaining bound can enter the top k."""
        order = self._candidates(bounds, 0.0)
        heap: list[tuple[float, int]] = []  # min-heap of (score, -index)
        for s in range(0, len(order), 64):
            block = order[s:s + 64]
            if len(heap) >= self.top_k and bounds[block[0]] < heap[0][0] - _MARGIN:
                break
            for i, score in self._exact(query, block):
                item = (score, -i)
                if len(heap) < self.top_k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        return [(-neg, score) for score, neg in sorted(heap, reverse=True)]

    def _avg_similarity(self, query: LcsQuery) -> float:
        """Mean ROUGE-L F against the pool: exact up to `avg_sample` members, else an evenly
        spaced (deterministic) sample of that many, so the metadata costs O(1) per candidate."""
        n = len(self.texts)
        if n == 0 or self.avg_sample <= 0:
            return 0.0
        idx = range(n) if n <= self.avg_sample else np.linspace(0, n - 1, self.avg_sample).astype(int)
        return float(np.mean([query.f(self.tokens[i]) for i in idx]))

    def check(self, text: str, with_metadata: bool = True) -> Decision:
        """Is `text` a near-duplicate of a kept instruction? Does not add it (see `add`)."""
        tokens = tokenize(text)
        if not tokens or not self.texts:
            return Decision(accepted=True, tokens=tokens)
        bounds = self._bounds(tokens)
        query = LcsQuery(tokens)
        hit = self._first_duplicate(query, self._candidates(bounds, self.threshold))
        if hit is not None:
            return Decision(accepted=False, tokens=tokens, score=hit[1], match=hit[0])
        decision = Decision(accepted=True, tokens=tokens)
        if with_metadata:
            decision.most_similar = self._top_k(query, bounds)
            decision.score = decision.most_similar[0][1] if decision.most_similar else 0.0
            decision.avg_similarity = self._avg_similarity(query)
        return decision

    # -- the one persistent pool ---------------------------------------------------------------

    def _get_pool(self):
        if self._pool is None:
            # spawn, not fork: the generator also runs HTTP client threads, which fork can break.
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> RougeDedup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
