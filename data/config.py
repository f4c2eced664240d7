"""DataConfig: what to train on and how to batch it; nested in the trainer's config as `data:`."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from data.alpaca import DataError
from data.packing import STRATEGIES, Strategy
from data.prompts import get_template

Source = Literal["files", "synthetic"]
SOURCES = typing.get_args(Source)


@dataclass
class DataConfig:
    # Alpaca-format files (JSON list or JSONL), mixed by `weights`: a weight w takes each file's
    # examples w times per epoch (2.0 = twice, 0.5 = a fixed seeded half; None = all 1.0).
    paths: list[str] = field(default_factory=list)
    # "files": train on `paths`. "synthetic": the trainer writes data/synthetic.py's tasks and
    # trains on them (the tiny default); `paths` must then be empty.
    source: Source = "files"
    weights: list[float] | None = None
    template: str = "alpaca"  # a name in data.prompts.TEMPLATES, or a .json file with the two keys
    max_len: int = 512  # cut of [BOS]+prompt+output+[EOS]; rows then have max_len - 1 tokens
    skip_invalid: bool = False  # False: the first bad record stops the run (exit 2)
    packing: bool = False  # pack examples into rows of pack_len (block-diagonal attention)
    pack_len: int = 2048
    # Which examples share a row (data/packing.py): "best_fit" (best-fit decreasing within windows
    # of pack_window shuffled examples; ~0.98-0.99 of a row filled) or "next_fit" (arrival order;
    # ~0.94-0.97). A larger window fills rows better but moves examples further from their shuffle.
    pack_strategy: Strategy = "best_fit"
    pack_window: int = 1000
    group_by_length: bool = False  # sort megabatches by length (less padding, less randomness)
    megabatch_size: int = 512  # examples per length-sorted group; independent of the batch split
    cache_dir: str | None = ".cache/data"  # None: tokenize in memory, no cache
    num_proc: int = 2  # tokenizer processes for the one-time cache build

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DataError(f"data.source: expected one of {', '.join(SOURCES)}, got {self.source!r}")
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        if not isinstance(self.paths, list) or not all(isinstance(p, str) and p for p in self.paths):
            raise DataError("data.paths: expected a list of file paths")
        if not self.paths and self.source == "files":
            raise DataError("data.paths: no data files given")
        if self.paths and self.source == "synthetic":
            raise DataError("data.paths cannot apply with data.source=synthetic (the trainer writes the data); "
                            "set data.source=files to train on these files")
        if self.weights is not None:
            if len(self.weights) != len(self.paths):
                raise DataError(f"data.weights: {len(self.weights)} weights for {len(self.paths)} paths")
            if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in self.weights):
                raise DataError("data.weights: expected non-negative numbers")
            if sum(self.weights) <= 0:
                raise DataError("data.weights: all zero")
        if self.pack_strategy not in STRATEGIES:
            raise DataError(f"data.pack_strategy: expected one of {', '.join(STRATEGIES)}, got {self.pack_strategy!r}")
        for name in ("max_len", "pack_len", "pack_window", "megabatch_size", "num_proc"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"data.{name}: expected a positive integer, got {v!r}")
        if self.max_len < 2:
            raise DataError("data.max_len: must be at least 2 (BOS and one target)")
        if self.packing and self.pack_len < self.max_len - 1:
            raise DataError(f"data.pack_len: {self.pack_len} cannot hold a {self.max_len - 1}-token example "
                            f"(need pack_len >= max_len - 1)")
        try:
            get_template(self.template)
        except ValueError as e:
            raise DataError(f"data.template: {e}") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Build from a YAML mapping; an unknown key is an error naming it, not a silent no-op."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"data.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**d)
