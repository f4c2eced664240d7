"""How a dataset tokenizes and batches: one JSON object, for sizing max_len / batch / packing.

    python -m tools.data_stats --data FILE [FILE ...] --tokenizer FILE \\
        [--max-len 512 --batch-size 4 --pack-len 2048 --pack-strategy best_fit --pack-window 1000
         --template alpaca]

Token counts are what the model processes: an example of sequence length L ([BOS] + prompt +
output + [EOS], cut to max_len) is L - 1 input tokens. Both efficiencies are measured in the
order training sees (the sampler's epoch-0 shuffle for --seed, one rank):
padding_efficiency = real tokens / (batch_size x longest) summed over consecutive batches, and
packing_efficiency = real tokens / (rows x pack_len) with --pack-strategy; `packing` gives the
efficiency and row count of both strategies side by side. Bad data exits 2 with one line naming
the file, record and field.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from data.alpaca import IGNORE_INDEX, DataError, read_records
from data.config import DataConfig
from data.dataset import load_dataset
from data.packing import STRATEGIES
from data.sampler import AlpacaSampler


def padding_efficiency(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> float:
    batches = [lengths[order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
    return float(lengths.sum() / sum(len(b) * b.max() for b in batches))


def compute_stats(cfg: DataConfig, tokenizer, batch_size: int, seed: int = 0) -> dict:
    ds = load_dataset(cfg, tokenizer, seed)
    lengths = ds.lengths
    order = np.concatenate(AlpacaSampler(lengths, batch_size, seed=seed, group_by_length=cfg.group_by_length,
                                         megabatch_size=cfg.megabatch_size).units(0))
    packing = {}
    for strategy in STRATEGIES:
        rows = AlpacaSampler(lengths, 1, seed=seed, pack_len=cfg.pack_len, pack_strategy=strategy,
                             pack_window=cfg.pack_window).units(0)
        packing[strategy] = {"efficiency": round(float(lengths.sum() / (len(rows) * cfg.pack_len)), 4),
                             "rows": len(rows)}
    targets = sum(int((ds[i][1] != IGNORE_INDEX).sum()) for i in range(len(ds)))
    stats = ds.stats
    return {
        "examples": len(ds),
        "dropped": stats["dropped"],
        "truncated": stats["truncated"],
        "skipped": stats["skipped"],
        "records": stats["records"],
        "total_tokens": int(lengths.sum()),
        "target_tokens": targets,
        "mean_tokens": round(float(lengths.mean()), 1),
        "max_tokens": int(lengths.max()),
        "padding_efficiency": round(padding_efficiency(lengths, order, batch_size), 4),
        "packing_efficiency": packing[cfg.pack_strategy]["efficiency"],
        "packed_rows": packing[cfg.pack_strategy]["rows"],
        "packing": packing,
        "max_len": cfg.max_len,
        "batch_size": batch_size,
        "pack_len": cfg.pack_len,
        "pack_strategy": cfg.pack_strategy,
        "pack_window": cfg.pack_window,
        "template": cfg.template,
        "group_by_length": cfg.group_by_length,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.data_stats", description=__doc__.split("\n")[0],
                                epilog="Exit status: 0 ok; 2 bad input (a data or tokenizer file it cannot read, "
                                       "arguments), one line on stderr.")
    p.add_argument("--data", nargs="+", required=True, help="Alpaca-format JSON / JSONL file(s)")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model file")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--pack-len", type=int, default=2048)
    p.add_argument("--pack-strategy", choices=STRATEGIES, default="best_fit",
                   help="the packer behind packing_efficiency / packed_rows (both are in `packing`)")
    p.add_argument("--pack-window", type=int, default=1000, help="best-fit window, in examples")
    p.add_argument("--template", default="alpaca")
    p.add_argument("--group-by-length", action="store_true", help="padding efficiency with length grouping")
    p.add_argument("--megabatch-size", type=int, default=512)
    p.add_argument("--skip-invalid", action="store_true", help="skip and count bad records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--cache-dir", default=".cache/data", help="'' to tokenize without caching")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be positive")
    try:
        for path in a.data:  # bad data fails here, before torch and the tokenizer are loaded
            read_records(path, a.skip_invalid)
        from model.tokenizer import TokenizerError, load_tokenizer

        try:
            tokenizer = load_tokenizer(a.tokenizer)
        except TokenizerError as e:  # neither sentencepiece nor tiktoken: one line, exit 2
            raise DataError(str(e)) from None
        cfg = DataConfig(paths=a.data, template=a.template, max_len=a.max_len, skip_invalid=a.skip_invalid,
                         packing=True, pack_len=a.pack_len, pack_strategy=a.pack_strategy,
                         pack_window=a.pack_window, group_by_length=a.group_by_length,
                         megabatch_size=a.megabatch_size, cache_dir=a.cache_dir or None, num_proc=a.num_proc)
        print(json.dumps(compute_stats(cfg, tokenizer, a.batch_size, a.seed)))
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
