"""Will this config fit, and how long will a step take? Ask before you queue the job.

    python -m tools.plan --config configs/alpaca_7b.yaml --gpus 8 --gpu a100
    python -m tools.plan --config configs/alpaca_13b.yaml --gpus 8 --gpu-mem-gb 80 --model llama1-13b
    python -m tools.plan --config configs/bench_1b.yaml --gpus 1 --measure     # predicted vs measured

Prints, per GPU, each term of train/plan.py (sharded parameters, gradients, AdamW state, gathered
layers, activations, loss, slack), the verdict against the GPU's memory and, when it does not
fit, the smallest change that does. Then the step's model FLOPs and its time at a given MFU.
`--model PRESET` stands in for a `model.init_from` checkpoint that is not on this machine.

`--measure` runs three optimizer steps of the config on random tokens of the planned shape (one
process, or each rank under torchrun) and reports the measured peak beside the prediction:
`torch.cuda.max_memory_allocated` on a GPU; on a CPU the rise of the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs) above its resident set before the model was built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _model_args(cfg, preset: str | None):
    """The trainer's own ModelArgs (train.build.args_from_config); vocab 32000 unless the config
    pins it, since the planner reads no tokenizer."""
    from model.args import ModelArgs
    from train.build import args_from_config

    if preset:
        return ModelArgs.preset(preset)
    if cfg.model.init_from and not (Path(cfg.model.init_from) / "config.json").is_file():
        raise ValueError(f"model.init_from={cfg.model.init_from} is not on this machine: "
                         "name its architecture with --model PRESET (e.g. llama1-7b)")
    return args_from_config(cfg, default_vocab=32000)


def report(cfg, args, gpus: int, gpu_mem_gb: float, mfu: float, peak_tflops: float | None,
           context_gb: float) -> tuple[str, bool]:
    from train.plan import GB, plan, smallest_fix

    p = plan(cfg, args, gpus, context_gb)
    lines = [f"model {args.num_params() / 1e9:.2f}B params, {gpus} GPU(s), sharded over {p.shard}, "
             f"{cfg.parallel.mixed_precision}, activation checkpointing {cfg.parallel.activation_checkpointing}, "
             f"{p.tokens} tokens per micro-batch, accumulation {cfg.batch.grad_accum}",
             "per GPU:"]
    lines += [f"  {k:<16} {v / GB:8.2f} GB" for k, v in p.terms.items()]
    ok = p.fits(gpu_mem_gb)
    lines.append(f"  {'total':<16} {p.total / GB:8.2f} GB of {gpu_mem_gb:.0f} GB: "
                 + ("fits" if ok else "DOES NOT FIT"))
    if not ok:
        fix = smallest_fix(cfg, args, gpus, gpu_mem_gb, context_gb)
        lines.append(f"  smallest change that fits: {fix or 'none found (more GPUs of more memory)'}")
    lines.append(f"step: {p.flops_per_step / 1e15:.2f} PFLOP (model FLOPs, all GPUs)")
    if peak_tflops:
        t = p.flops_per_step / (gpus * peak_tflops * 1e12 * mfu)
        lines.append(f"  at {100 * mfu:.0f}% MFU of {peak_tflops:.0f} TFLOP/s per GPU: {t:.2f} s per step")
    return "\n".join(lines), ok


def measure(cfg, args, steps: int = 3) -> dict:
    """Peak memory of `steps` optimizer steps of this config on random tokens (this process)."""
    import torch

    from data.collate import Batch
    from train.build import build_training
    from train.distributed import init_distributed
    from train.plan import tokens_per_micro_batch
    from train.step import prepare_step, train_step

    info = init_distributed()
    micro = cfg.batch.micro_batch_size
    T = tokens_per_micro_batch(cfg) // micro
    g = torch.Generator().manual_seed(0)

    def batch() -> Batch:
        tokens = torch.randint(0, args.vocab_size, (micro, T), generator=g)
        return Batch(tokens, tokens.roll(-1, 1), None, None, micro * T, micro * T, [[T]] * micro)

    batches = [prepare_step([batch() for _ in range(cfg.batch.grad_accum)], info.device, cfg.parallel.attention)
               for _ in range(steps)]
    _warm_up(info.device)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
        base = torch.cuda.memory_allocated(info.device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS") * 1024
    model, optimizer, scheduler = build_training(cfg, args, info, steps)
    for step_batches in batches:
        train_step(model, optimizer, scheduler, step_batches, cfg.optim.grad_clip)
    if info.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(info.device) - base
        kind = "cuda max_memory_allocated"
    else:
        peak = _status_kb("VmHWM") * 1024 - base
        kind = "CPU peak RSS (VmHWM) above the RSS before the model was built"
    return {"measured_gb": peak / 1e9, "kind": kind, "world": info.world_size, "is_main": info.is_main}


def _warm_up(device) -> None:
    """One step of a toy model first, so that code pages and thread pools the first step touches
    (hundreds of MB of RSS on a CPU) are resident before the baseline, not counted as the plan's."""
    import torch

    from model.args import ModelArgs
    from model.llama import Transformer

    toy = Transformer(ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=128, multiple_of=16)).to(device)
    opt = torch.optim.AdamW(toy.parameters(), foreach=device.type != "cuda", fused=device.type == "cuda" or None)
    tokens = torch.randint(0, 128, (2, 16), device=device)
    toy(tokens, labels=tokens).backward()
    opt.step()
    del toy, opt


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in the job (default 8; WORLD_SIZE with --measure)")
    parser.add_argument("--gpu", default="a100", help="a100 (80 GB) | a100-40 | h100 | h200")
    parser.add_argument("--gpu-mem-gb", type=float, default=None, help="overrides --gpu's memory")
    parser.add_argument("--model", default=None, help="a model preset standing in for model.init_from")
    parser.add_argument("--mfu", type=float, default=0.4, help="MFU for the step-time bound")
    parser.add_argument("--measure", action="store_true", help="also run 3 steps here and measure the peak")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, as for python -m train")
    ns = parser.parse_args(argv)

    from train.config import ConfigError, load_config
    from train.plan import GPUS, PEAK_TFLOPS, plan

    try:
        cfg = load_config(ns.config, ns.overrides)
        if ns.gpu not in GPUS:
            raise ConfigError(f"--gpu {ns.gpu}: known GPUs are {', '.join(GPUS)} (or give --gpu-mem-gb)")
        args = _model_args(cfg, ns.model)
        gpus = ns.gpus or (int(os.environ.get("WORLD_SIZE", "1")) if ns.measure else 8)
        plan(cfg, args, gpus)  # raises on an impossible layout
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mem = ns.gpu_mem_gb or GPUS[ns.gpu]
    if not ns.measure:
        text, ok = report(cfg, args, gpus, mem, ns.mfu, PEAK_TFLOPS[ns.gpu], context_gb=1.5)
        print(text)
        return 0 if ok else 1
    import torch

    on_gpu = torch.cuda.is_available()
    measured = measure(cfg, args)
    # On a CPU there is no accelerator context to add; max_memory_allocated does not show it either.
    predicted = plan(cfg, args, measured["world"], context_gb=0.0)
    if measured["is_main"]:
        row = {"config": ns.config, "overrides": ns.overrides, "world": measured["world"],
               "device": "cuda" if on_gpu else "cpu", "predicted_gb": round(predicted.total / 1e9, 3),
               "measured_gb": round(measured["measured_gb"], 3),
               "ratio": round(predicted.total / 1e9 / measured["measured_gb"], 3),
               "terms_gb": {k: round(v / 1e9, 3) for k, v in predicted.terms.items()}, "kind": measured["kind"]}
        print(json.dumps(row) if ns.json else "\n".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
