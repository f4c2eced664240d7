"""AlpacaLoader: what the training loop iterates. Batches forever, resumable, in the main process
(examples are pre-tokenized, so a batch is a few array slices: no worker processes needed)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data.alpaca import IGNORE_INDEX, DataError
from data.collate import Batch, collate_padded, collate_rows
from data.config import DataConfig
from data.dataset import load_dataset
from data.packing import pack
from data.sampler import AlpacaSampler


class AlpacaLoader:
    """Micro-batches for one rank.

    Without packing a micro-batch is `micro_batch_size` examples padded to the longest; with
    packing it is `micro_batch_size` rows of `pack_len` tokens, each holding several examples.
    The loss of an optimizer step is the summed token loss over its `grad_accum` micro-batches
    and all ranks, divided by the sum of their `num_targets` (docs/DESIGN.md).
    """

    def __init__(self, cfg: DataConfig, tokenizer, micro_batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, grad_accum: int = 1):
        self.cfg = cfg
        self.pad_id = tokenizer.pad_id
        self.dataset = load_dataset(cfg, tokenizer, seed)
        self.sampler = AlpacaSampler(self.dataset.lengths, micro_batch_size, rank, world_size, seed,
                                     grad_accum, cfg.group_by_length, cfg.megabatch_size,
                                     cfg.pack_len if cfg.packing else None, cfg.pack_strategy, cfg.pack_window)

    def _check_fills_a_step(self) -> None:
        # Checked when training starts, not at construction: a small held-out set is fine for
        # one_pass() even when it cannot fill a training step.
        if self.sampler.micro_batches_per_epoch() == 0:
            raise DataError(f"{len(self.dataset)} examples cannot fill one optimizer step of "
                            f"{self.sampler.units_per_step} {'rows' if self.cfg.packing else 'examples'} "
                            f"(micro_batch_size x world_size x grad_accum)")

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def stats(self) -> dict:
        """examples, dropped, truncated, skipped, records, and per-file counts."""
        return self.dataset.stats

    def micro_batches_per_epoch(self) -> int:
        """Micro-batches this rank runs per epoch (the same on every rank)."""
        return self.sampler.micro_batches_per_epoch()

    def steps_per_epoch(self, grad_accum: int | None = None) -> int:
        """Optimizer steps per epoch. The tail of an epoch that cannot fill a step is skipped."""
        if grad_accum is not None and grad_accum != self.sampler.accum:
            raise ValueError(f"loader built with grad_accum={self.sampler.accum}, asked for {grad_accum}")
        self._check_fills_a_step()
        return self.sampler.steps_per_epoch()

    def collate(self, units) -> Batch:
        """A batch from a list of units (arrays of example ids) as the sampler yields them."""
        if self.cfg.packing:
            rows = [[self.dataset[int(i)] for i in unit] for unit in units]
            return collate_rows(rows, self.cfg.pack_len, self.pad_id)
        return collate_padded([self.dataset[int(i)] for unit in units for i in unit], self.pad_id)

    def one_pass(self) -> Iterator[Batch]:
        """Every example exactly once, unshuffled and with no tail dropped: held-out evaluation.

        Slots of `micro_batch_size` units go round-robin over ranks as in training. Every rank
        yields the same number of batches (FSDP forwards are collectives); where a rank's share
        runs out it gets a filler batch with no targets (num_targets 0), which adds nothing to a
        summed loss. The training position is untouched."""
        order = np.arange(len(self.dataset))
        if self.cfg.packing:
            rows = pack(self.dataset.lengths, self.cfg.pack_len, self.cfg.pack_strategy, self.cfg.pack_window)
            units = [order[row] for row in rows]
        else:
            units = list(order[:, None])
        micro, world, rank = self.sampler.micro, self.sampler.world, self.sampler.rank
        n_slots = -(-len(units) // micro)
        for slot in range(rank, -(-n_slots // world) * world, world):
            if slot < n_slots:
                yield self.collate(units[slot * micro:(slot + 1) * micro])
            else:
                filler = self.collate([order[:1]])
                filler.labels.fill_(IGNORE_INDEX)
                filler.num_targets = 0
                yield filler

    def __iter__(self) -> Iterator[Batch]:
        """Batches forever, epoch after epoch; resume by load_state_dict before iterating."""
        self._check_fills_a_step()
        while True:
            for units in self.sampler:
                yield self.collate(units)
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict:
        """The sampler's position plus a fingerprint of the data (files' cache keys, weights)."""
        return {**self.sampler.state_dict(), "data_fingerprint": self.dataset.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly: refuses a state taken on other data, where "the same batches" is void."""
        if state.get("data_fingerprint") != self.dataset.fingerprint:
            raise DataError("loader state was saved on different data (files, tokenizer, template, max_len "
                            "or weights changed); resuming would not see the batches it would have seen")
        self.sampler.load_state_dict(state)
