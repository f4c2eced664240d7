"""Checkpoint save / verify benchmark:
`python -m tools.bench_checkpoint --config FILE --dir DIR [key=value ...]` (alone or under torchrun).

`--compare-async ROUNDS`: asynchronous vs synchronous periodic saves. Child processes, one per
mode, alternating (sync, async, sync, async, ...) so both see the same machine; each trains on
random tokens (`--steps-between` optimizer steps between saves, `--saves` saves) with the loop's
own `Checkpointer`, and reports the seconds the loop was blocked by each save and the rise of its
peak resident set (VmHWM, reset just before the first save) above the resident set then. One JSON
line per child, then one summary line.

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
    parser.add_argument("--compare-async", type=int, default=0, metavar="ROUNDS",
                        help="alternate sync and async child processes ROUNDS times each")
    parser.add_argument("--saves", type=int, default=3, help="with --compare-async: saves per child")
    parser.add_argument("--steps-between", type=int, default=2, help="with --compare-async: steps between saves")
    parser.add_argument("--child", choices=["sync", "async"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. model.n_layers=8")
    ns = parser.parse_args(argv)
    if ns.compare_async:
        return compare(ns)
    if ns.child:
        return child(ns)

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


def compare(ns) -> int:
    """Alternate sync and async children; print each child's line and a summary."""
    import os
    import statistics
    import subprocess

    results: dict[str, list[dict]] = {"sync": [], "async": []}
    for _ in range(ns.compare_async):
        for mode in ("sync", "async"):
            cmd = [sys.executable, "-m", "tools.bench_checkpoint", "--config", ns.config, "--dir", ns.dir,
                   "--child", mode, "--saves", str(ns.saves), "--steps-between", str(ns.steps_between),
                   *ns.overrides]
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            line = [x for x in out.splitlines() if x.startswith("{")][-1]
            print(line, flush=True)
            results[mode].append(json.loads(line))
    summary = {"summary": True}
    for mode, runs in results.items():
        blocked = [b for r in runs for b in r["blocked_s"]]
        summary[mode] = {"blocked_s_median": round(statistics.median(blocked), 3),
                         "blocked_s_max": round(max(blocked), 3),
                         "extra_peak_rss_gb_max": max(r["extra_peak_rss_gb"] for r in runs),
                         "step_s_median": round(statistics.median(s for r in runs for s in r["step_s"]), 3)}
    line = json.dumps(summary)
    print(line, flush=True)
    if ns.out:
        with open(ns.out, "a") as f:
            f.write(line + "\n")
    return 0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(ns) -> int:
    """One mode: train on random tokens, save every `steps_between` steps as the loop does."""
    import torch
    import torch.distributed as dist

    from data.collate import Batch
    from model.tokenizer import load_tokenizer
    from train.build import build_training, model_args
    from train.checkpointer import Checkpointer
    from train.config import load_config
    from train.distributed import init_distributed
    from train.plan import tokens_per_micro_batch
    from train.step import prepare_step, train_step

    cfg = load_config(ns.config, ns.overrides)
    info = init_distributed()
    args = model_args(cfg, load_tokenizer(cfg.tokenizer))
    steps = ns.saves * ns.steps_between
    model, optimizer, scheduler = build_training(cfg, args, info, total_steps=steps + 1)
    micro = cfg.batch.micro_batch_size
    T = tokens_per_micro_batch(cfg) // micro
    tokens = torch.randint(0, args.vocab_size, (micro, T), generator=torch.Generator().manual_seed(0))
    batch = prepare_step([Batch(tokens, tokens.roll(-1, 1), None, None, micro * T, micro * T, [[T]] * micro)],
                         info.device, cfg.parallel.attention)
    train_step(model, optimizer, scheduler, batch, cfg.optim.grad_clip)  # warm-up; AdamW state exists
    root = Path(ns.dir) / ns.child
    shutil.rmtree(root, ignore_errors=True)
    saver = Checkpointer(root, info, keep=1, log=lambda _: None, asynchronous=ns.child == "async")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    base_kb = _status_kb("VmRSS")
    blocked, step_s = [], []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        train_step(model, optimizer, scheduler, batch, cfg.optim.grad_clip)
        step_s.append(time.perf_counter() - t0)
        if step % ns.steps_between == 0:
            t0 = time.perf_counter()
            saver.save(step, model, optimizer, {"step": step})
            blocked.append(time.perf_counter() - t0)
        saver.poll()
    t0 = time.perf_counter()
    saver.finish()
    final_wait = time.perf_counter() - t0
    saver.close()
    extra_gb = (_status_kb("VmHWM") - base_kb) * 1024 / 1e9
    nbytes = sum(f.stat().st_size for f in (root / f"step_{steps}").iterdir())
    if info.is_main:
        print(json.dumps({"mode": ns.child, "params": args.num_params(), "bytes": nbytes,
                          "blocked_s": [round(b, 3) for b in blocked], "final_wait_s": round(final_wait, 3),
                          "step_s": [round(s, 3) for s in step_s], "extra_peak_rss_gb": round(extra_gb, 3),
                          "world": info.world_size, "torch": torch.__version__}), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
