"""Which examples share a packed row: next-fit in arrival order, or best-fit decreasing in windows.

Both take the lengths of the epoch's shuffled stream and return rows as lists of positions into
it, each row holding at most pack_len tokens. Neither depends on how a step is split across ranks,
micro-batches or accumulation, so the sampler can cut the row stream into slots afterwards and
keep a global step's contents split-independent (data/sampler.py).

Best-fit decreasing (BFD) within windows of `window` consecutive examples: a window's examples
go longest first into the open row whose free space fits them most tightly, or into a new row.
A window's tail is where BFD is weakest (the last rows hold whatever small examples are left),
so a row that ends a window filled below CARRY_BELOW goes back, unpacked, into the next window,
where larger examples can complete it; an example is carried at most once, so no example trains
more than one window after its shuffled position. The last window of the stream carries nothing.
"""

from __future__ import annotations

import bisect
import typing
from collections.abc import Sequence
from typing import Literal

import numpy as np

Strategy = Literal["best_fit", "next_fit"]
STRATEGIES = typing.get_args(Strategy)
# Rows of pure fresh examples filled below this fraction are repacked with the next window. 0.95 was
# measured on the three shared sets (docs/DATA.md): below it the window tails cost ~0.5% fill, above
# it nothing is gained.
CARRY_BELOW = 0.95


def _check_fits(lengths: np.ndarray, pack_len: int) -> None:
    if len(lengths) and lengths.max() > pack_len:
        raise ValueError(f"an example of {int(lengths.max())} tokens does not fit pack_len {pack_len}")


def pack_rows(lengths: Sequence[int] | np.ndarray, pack_len: int) -> list[list[int]]:
    """Next-fit packing in the given order: indices of the examples of each row. Keeping the
    order keeps the sampler's shuffle (a row is a contiguous run of the epoch's stream)."""
    rows: list[list[int]] = []
    used = pack_len + 1  # forces a new row for the first example
    for i, n in enumerate(lengths):
        if n > pack_len:
            raise ValueError(f"an example of {n} tokens does not fit pack_len {pack_len}")
        if used + n > pack_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def best_fit_decreasing(lengths: np.ndarray, pack_len: int) -> list[list[int]]:
    """Classic BFD over one set: indices (into `lengths`) of each row, rows in the order opened.
    Ties (equal lengths, equal free space) go to the earlier index / earlier row: deterministic."""
    order = np.argsort(-lengths, kind="stable")
    free: list[tuple[int, int]] = []  # (free tokens, row), kept sorted: the tightest fit is a bisect
    rows: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))  # first row with at least n tokens free
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = pack_len, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(free, (space - n, r))
    return rows


def best_fit_rows(lengths: Sequence[int] | np.ndarray, pack_len: int, window: int,
                  rng: np.random.Generator | None = None) -> list[list[int]]:
    """BFD within windows of `window` examples of the stream, with the carry described above.

    Returns rows of positions into `lengths`. With `rng`, each window's rows are emitted in a
    random order (BFD opens rows longest-first, so without it the first rows of every window
    would hold the longest examples and the last ones only short leftovers); without, in the
    order BFD opened them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if window < 1:
        raise ValueError(f"pack window must be positive, got {window}")
    _check_fits(lengths, pack_len)
    out: list[list[int]] = []
    carried = np.zeros(0, dtype=np.int64)
    for start in range(0, len(lengths), window):
        fresh = np.arange(start, min(start + window, len(lengths)), dtype=np.int64)
        ids = np.concatenate([carried, fresh])
        rows = [ids[r] for r in best_fit_decreasing(lengths[ids], pack_len)]
        emit, carry = rows, []
        if start + window < len(lengths):
            emit = []
            for row in rows:
                pure_fresh = row.min() >= start  # carried ids come from earlier windows
                underfilled = lengths[row].sum() < CARRY_BELOW * pack_len
                (carry if pure_fresh and underfilled else emit).append(row)
        carried = np.sort(np.concatenate(carry)) if carry else np.zeros(0, dtype=np.int64)
        if rng is not None:
            emit = [emit[j] for j in rng.permutation(len(emit))]
        out.extend(row.tolist() for row in emit)
    return out


def pack(lengths: Sequence[int] | np.ndarray, pack_len: int, strategy: str = "best_fit", window: int = 1000,
         rng: np.random.Generator | None = None) -> list[list[int]]:
    """Rows of positions into `lengths` by `strategy` ("best_fit" or "next_fit")."""
    if strategy == "next_fit":
        return pack_rows(lengths, pack_len)
    if strategy == "best_fit":
        return best_fit_rows(lengths, pack_len, window, rng)
    raise ValueError(f"pack strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
