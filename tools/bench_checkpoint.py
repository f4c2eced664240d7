"""Checkpoint save / verify benchmark:
`python -m tools.bench_checkpoint --config FILE --dir DIR [key=value ...]` (alone or under torchrun).

Builds the configured model exactly as training does (FSDP2, AdamW state initialised), then times
what a preemption spends: `train.checkpoint.save` (DCP shards fsynced + train state + SHA-256 of
every file + manifest + rename), and what a resume spends before loading: verification with
checksums and with sizes only. Prints one JSON line; numbers go to docs/CHECKPOINTS.md with the
hardware, never into tests. Page cache: the save hashes files it has just written (cached); the
verification is timed after dropping nothing, so it is the warm-cache figure (a resume on a new
node reads cold from storage: bound it by the storage's read bandwidth instead).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_checkpoint", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 measured; 2 arguments it does not accept.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--dir", required=True, help="scratch directory for the checkpoint (removed after)")
    parser.add_argument("--out", default=None, help="append the JSON result to this file")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. model.n_layers=8")
    ns = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    from model.manifest import check_checksums, check_sizes, read_manifest
    from model.tokenizer import load_tokenizer
    from train import checkpoint as ckpt
    from train.build import build_training, model_args
    from train.config import load_config
    from train.distributed import init_distributed

    cfg = load_config(ns.config, ns.overrides)
    info = init_distributed()
    args = model_args(cfg, load_tokenizer(cfg.tokenizer))
    model, optimizer, _ = build_training(cfg, args, info, total_steps=1)
    root = Path(ns.dir)
    shutil.rmtree(root, ignore_errors=True)

    t0 = time.perf_counter()
    path = ckpt.save(root, 1, model, optimizer, {"step": 1}, info, keep=1)
    save_s = time.perf_counter() - t0
    files = read_manifest(path)["files"]
    nbytes = sum(e["size"] for e in files.values())
    t0 = time.perf_counter()
    check_sizes(path, files)
    sizes_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if info.is_main:
        check_checksums(path, files)  # one process, all files: the hashing rate of one rank
    checksum_s = time.perf_counter() - t0
    dist.barrier()
    if info.is_main:
        result = {"params": args.num_params(), "world": info.world_size, "bytes": nbytes,
                  "save_s": round(save_s, 2), "save_GBps": round(nbytes / save_s / 1e9, 3),
                  "verify_sizes_s": round(sizes_s, 4), "verify_checksums_s": round(checksum_s, 2),
                  "checksum_GBps": round(nbytes / checksum_s / 1e9, 3), "device": str(info.device),
                  "torch": torch.__version__}
        line = json.dumps(result)
        print(line, flush=True)
        if ns.out:
            with open(ns.out, "a") as f:
                f.write(line + "\n")
        shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
