"""Which examples go in which micro-batch on which rank: deterministic, sharded, resumable.

Each epoch the example ids are permuted with a generator seeded by (seed, epoch); optionally
each megabatch of `megabatch_size` ids is sorted by length (longest first), and with packing the
stream is packed into rows of pack_len tokens (best-fit decreasing within windows of the stream, or
next-fit; data/packing.py). The resulting stream of *units* (an
example, or a packed row) is cut into slots of `micro_batch_size` units and rank r takes slots
r, r + W, r + 2W, ... Since nothing before the slot cut depends on the batch split, one global
step holds the same examples however it is split: world 1 x batch 4, world 2 x batch 2 and
batch 2 x accumulation 2 all train step k on units [4k, 4k + 4).

The epoch's tail that cannot fill a whole optimizer step (micro x world x accum units) is left
out, so every rank runs the same number of micro-batches (collectives stay matched) and every
step has the full global batch; the next epoch's shuffle leaves out different examples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data.packing import STRATEGIES, pack


class AlpacaSampler:
    """Per-rank micro-batches of units (see the module docstring); iterate one epoch at a time."""

    def __init__(self, lengths: np.ndarray, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, grad_accum: int = 1, group_by_length: bool = False,
                 megabatch_size: int = 512, pack_len: int | None = None, pack_strategy: str = "best_fit",
                 pack_window: int = 1000):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        if min(micro_batch_size, grad_accum, megabatch_size) < 1:
            raise ValueError("micro_batch_size, grad_accum and megabatch_size must be positive")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.micro, self.rank, self.world, self.accum = micro_batch_size, rank, world_size, grad_accum
        self.seed, self.group_by_length, self.megabatch_size = seed, group_by_length, megabatch_size
        if pack_strategy not in STRATEGIES or pack_window < 1:
            raise ValueError(f"pack_strategy must be one of {STRATEGIES} and pack_window positive, "
                             f"got {pack_strategy!r}, {pack_window!r}")
        self.pack_len, self.pack_strategy, self.pack_window = pack_len, pack_strategy, pack_window
        self.epoch, self.position = 0, 0
        self._plan_epoch: int | None = None
        self._plan: list[list[np.ndarray]] = []

    def units(self, epoch: int) -> list[np.ndarray]:
        """The epoch's stream of units, each an array of example ids (one id unless packing)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
        if self.group_by_length:
            parts = [order[i:i + self.megabatch_size] for i in range(0, len(order), self.megabatch_size)]
            # stable sort, longest first: ties keep the shuffled order
            order = np.concatenate([p[np.argsort(-self.lengths[p], kind="stable")] for p in parts])
        if self.pack_len is None:
            return list(order[:, None])
        # Its own generator for the order of rows within a window, so the example shuffle is untouched.
        rng = np.random.default_rng([self.seed, epoch, 1])
        rows = pack(self.lengths[order], self.pack_len, self.pack_strategy, self.pack_window, rng)
        return [order[row] for row in rows]

    @property
    def units_per_step(self) -> int:
        return self.micro * self.world * self.accum

    def micro_batches(self, epoch: int) -> list[list[np.ndarray]]:
        """This rank's micro-batches for an epoch, each a list of `micro_batch_size` units."""
        units = self.units(epoch)
        steps = len(units) // self.units_per_step
        n_slots = steps * self.units_per_step // self.micro
        slots = range(self.rank, n_slots, self.world)
        return [units[s * self.micro:(s + 1) * self.micro] for s in slots]

    def micro_batches_per_epoch(self) -> int:
        return len(self._epoch_plan())

    def steps_per_epoch(self) -> int:
        return self.micro_batches_per_epoch() // self.accum

    def _epoch_plan(self) -> list[list[np.ndarray]]:
        if self._plan_epoch != self.epoch:
            self._plan, self._plan_epoch = self.micro_batches(self.epoch), self.epoch
        return self._plan

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first micro-batch."""
        self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        """The rest of the current epoch; `position` counts micro-batches handed out."""
        plan = self._epoch_plan()
        while self.position < len(plan):
            self.position += 1
            yield plan[self.position - 1]

    def state_dict(self) -> dict:
        """Progress as units consumed by all ranks this epoch, so a run may resume with another
        split of the same global batch (other world size or micro-batch size)."""
        return {"epoch": self.epoch, "units_consumed": self.position * self.micro * self.world,
                "seed": self.seed, "num_examples": len(self.lengths), "pack_len": self.pack_len,
                "group_by_length": self.group_by_length, "megabatch_size": self.megabatch_size,
                "pack_strategy": self.pack_strategy, "pack_window": self.pack_window}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken: same data and stream, any batch split that
        divides the units consumed so far (always true at an optimizer-step boundary)."""
        mine = self.state_dict()
        for key in ("seed", "num_examples", "pack_len", "group_by_length", "megabatch_size",
                    "pack_strategy", "pack_window"):
            if key == "megabatch_size" and not self.group_by_length:
                continue
            if key == "pack_strategy" and self.pack_len is None:
                continue  # unpacked: the packer is irrelevant
            if key == "pack_window" and (self.pack_len is None or self.pack_strategy != "best_fit"):
                continue
            if state.get(key) != mine[key]:  # a missing key reads as None: refused in the same one line
                raise ValueError(f"sampler state has {key}={state.get(key)!r}, this run {mine[key]!r}")
        per_round = self.micro * self.world
        if state["units_consumed"] % per_round:
            raise ValueError(f"sampler state: {state['units_consumed']} units consumed is not a whole "
                             f"number of rounds of {per_round} (micro x world)")
        self.epoch, self.position = int(state["epoch"]), state["units_consumed"] // per_round
