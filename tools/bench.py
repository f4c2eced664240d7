"""Benchmarks. `python -m tools.bench train --config FILE [--steps N] [--warmup W] [key=value ...]`
runs the real training loop (train/loop.py, FSDP included; under torchrun too) for W + N steps
and reports what the last N measured: step time, real (non-padding) tokens/s, MFU and peak
memory, as one JSON line. `python -m tools.bench dedup ...` is generate/'s ROUGE-L dedup benchmark.

MFU needs the accelerator's peak FLOP/s: known for A100/H100/H200 (bf16 dense, train/metrics.py).
On a CPU there is no honest table value, so MFU is reported as null unless a peak is declared with
--peak-tflops (then the report says it was declared, not looked up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path


def bench_train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench train")
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first and not measured")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="declared peak TFLOP/s per device (for a device missing from the table)")
    parser.add_argument("--out", default=None, help="append the JSON result to this file")
    parser.add_argument("overrides", nargs="*")
    ns = parser.parse_args(argv)
    if ns.peak_tflops is not None:
        os.environ["TRAIN_PEAK_TFLOPS"] = str(ns.peak_tflops)

    import torch

    from train.config import ConfigError, load_config
    from train.loop import train
    from train.metrics import model_flops, peak_flops

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        # A benchmark measures the loop, not checkpoints, exports or evaluation.
        fixed = [f"output_dir={tmp}/run", f"max_steps={ns.warmup + ns.steps}", "checkpoint.every=0",
                 "checkpoint.export=false", "eval.every=0", "eval.exact_match=false", "resume=none",
                 "log.tensorboard=false", f"log.every={max(1, ns.warmup + ns.steps)}"]
        try:
            cfg = load_config(ns.config, [*ns.overrides, *fixed])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if cfg.data.source == "synthetic":  # keep the tiny assets (and their cache) out of tmp
            cfg.output_dir = str(Path("runs") / "bench_assets")
            cfg.overwrite = True  # each benchmark run replaces the previous one's metrics
        train(cfg)
        if os.environ.get("RANK", "0") != "0":
            return 0
        rows = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r][ns.warmup:]
    times = [r["step_time_s"] for r in rows]
    tokens = sum(r["tokens"] for r in rows)
    tps = tokens / sum(times)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    peak = peak_flops(device)

    from model.tokenizer import load_tokenizer
    from train.build import model_args

    args = model_args(cfg, load_tokenizer(cfg.tokenizer or str(Path(cfg.model.init_from) / "tokenizer.model")))
    # Model FLOPs of the measured steps, attention counted per document (train/metrics.py).
    flops = sum(model_flops(args, r["tokens"], r["attention_pairs"], r["targets"]) for r in rows)
    result = {
        "config": ns.config, "overrides": ns.overrides, "device": _device_name(device), "world_size": world,
        "dtype": cfg.parallel.mixed_precision, "activation_checkpointing": cfg.parallel.activation_checkpointing,
        "compile": cfg.parallel.compile, "params": args.num_params(),
        "global_batch": cfg.batch.micro_batch_size * cfg.batch.grad_accum * world,
        "measured_steps": len(rows), "step_time_s_median": statistics.median(times),
        "tokens_per_s": tps, "tokens_per_s_per_device": tps / world,
        "model_tflops_per_s": flops / sum(times) / 1e12,
        "mfu": flops / sum(times) / (peak * world) if peak else None,
        "peak_source": ("declared (--peak-tflops)" if ns.peak_tflops is not None else
                        "table" if peak else "none: no known peak for this device, MFU not reported"),
        "peak_mem_gb": max(r["peak_mem_gb"] for r in rows),
        "peak_mem_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "final_loss": rows[-1]["loss"],
    }
    line = json.dumps(result)
    print(line, flush=True)
    if ns.out:
        with open(ns.out, "a") as f:
            f.write(line + "\n")
    return 0


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__.split("\n\n")[0],
        epilog="`python -m tools.bench train --help` and `... dedup --help` list each one's options.\n\n"
               "Exit status: 0 measured; 1 dedup's two sides decided differently; 2 bad input "
               "(arguments, config), one line on stderr.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "dedup"])
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    ns = parser.parse_args(argv)
    if ns.command == "dedup":
        from generate.bench_dedup import main as dedup_main

        return dedup_main(ns.args)
    return bench_train(ns.args)


if __name__ == "__main__":
    sys.exit(main())
