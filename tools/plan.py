"""Will this config fit, and how long will a step take? Ask before you queue the job.

    python -m tools.plan --config configs/alpaca_7b.yaml --gpus 8 --gpu a100
    python -m tools.plan --config configs/alpaca_13b.yaml --gpus 8 --gpu-mem-gb 80 --model llama1-13b
    python -m tools.plan --config configs/bench_1b.yaml --gpus 1 --measure     # predicted vs measured

Prints, per GPU, each term of train/plan.py (sharded parameters, gradients, AdamW state, gathered
layers, activations, loss, slack), the verdict against the GPU's memory and, when it does not
fit, the smallest change that does. Then the step's model FLOPs and its time at a given MFU.
`--model PRESET` stands in for a `model.init_from` checkpoint that is not on this machine.

The vocabulary (the embedding and output sizes) is, in order: --model's preset, init_from's
config.json, a `model.vocab_size` the config pins, the config's `tokenizer:` file, the synthetic
tokenizer under `<output_dir>/assets` (data.source: synthetic) once `python -m train` has built it;
otherwise it is assumed (the synthetic tokenizer's size, or 32000), and the output says so.

`--json` prints one JSON object instead of the table: the plan's fields (params, vocab_size,
vocab_source, terms_gb, total_gb, host_gb, gpu_mem_gb, fits, smallest_fix, pflop_per_step, step_s, ...);
with --measure, the predicted and measured peaks.

`--measure` runs three optimizer steps of the config on random tokens of the planned shape (one
process, or each rank under torchrun) and reports the measured peak beside the prediction:
`torch.cuda.max_memory_allocated` on a GPU; on a CPU the rise of the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs) above its resident set before the model was built.

Exit status: 0 fits (or measured); 1 does not fit the GPU's memory (the plan is still printed,
with the smallest change that fits); 2 bad input (config, --gpu, a layout that cannot be built,
a tokenizer that cannot be read), one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_VOCAB = 32000  # LLaMA 1/2's vocabulary: what a config with no tokenizer most likely means


def vocabulary(cfg) -> tuple[int, str]:
    """(vocab_size, where it came from) for a config without --model or init_from."""
    from model.tokenizer import TokenizerError, load_tokenizer

    if "vocab_size" in cfg.model.args:
        return int(cfg.model.args["vocab_size"]), "model.vocab_size in the config"
    path = cfg.tokenizer
    if not path and getattr(cfg.data, "source", "files") == "synthetic":
        path = str(Path(cfg.output_dir) / "assets" / "tokenizer.model")
        if not Path(path).is_file():
            import inspect

            from data.synthetic import build_tiny_assets

            size = inspect.signature(build_tiny_assets).parameters["vocab_size"].default
            return size, f"assumed: the synthetic tokenizer's size ({path} is not built yet)"
    if path and Path(path).is_file():
        try:
            return load_tokenizer(path).vocab_size, path
        except TokenizerError as e:
            raise ValueError(str(e)) from None
    where = f"{path} is not on this machine" if path else "the config names no tokenizer"
    return DEFAULT_VOCAB, f"assumed: {where}"


def _model_args(cfg, preset: str | None):
    """The trainer's own ModelArgs (train.build.args_from_config) and where its vocabulary came from."""
    from model.args import ModelArgs
    from train.build import args_from_config

    if preset:
        return ModelArgs.preset(preset), f"the {preset} preset (--model)"
    if cfg.model.init_from:
        if not (Path(cfg.model.init_from) / "config.json").is_file():
            raise ValueError(f"model.init_from={cfg.model.init_from} is not on this machine: "
                             "name its architecture with --model PRESET (e.g. llama1-7b)")
        return args_from_config(cfg, default_vocab=DEFAULT_VOCAB), f"{cfg.model.init_from}/config.json"
    size, source = vocabulary(cfg)
    return args_from_config(cfg, default_vocab=size), source


def report(cfg, args, gpus: int, gpu_mem_gb: float, mfu: float, peak_tflops: float | None,
           context_gb: float, vocab_source: str = "") -> dict:
    """The plan as plain data: what --json prints, and what `render` lays out as the table."""
    from train.plan import GB, plan, smallest_fix

    p = plan(cfg, args, gpus, context_gb)
    ok = p.fits(gpu_mem_gb)
    step_s = p.flops_per_step / (gpus * peak_tflops * 1e12 * mfu) if peak_tflops else None
    lora = None
    if cfg.lora is not None:
        from train.plan_lora import adapter_params, targets

        lora = {"rank": cfg.lora.rank, "targets": targets(cfg.lora), "quantize_base": cfg.lora.quantize_base,
                "trainable_params": adapter_params(args, cfg.lora)}
    return {"params": args.num_params(), "vocab_size": args.vocab_size, "vocab_source": vocab_source, "lora": lora,
            "gpus": gpus, "shard": p.shard, "mixed_precision": cfg.parallel.mixed_precision,
            "activation_checkpointing": cfg.parallel.activation_checkpointing,
            "tokens_per_micro_batch": p.tokens, "grad_accum": cfg.batch.grad_accum,
            "terms_gb": {k: v / GB for k, v in p.terms.items()}, "total_gb": p.total / GB,
            "host_gb": {k: v / GB for k, v in p.host_terms.items()},
            "gpu_mem_gb": gpu_mem_gb, "fits": ok,
            "smallest_fix": None if ok else smallest_fix(cfg, args, gpus, gpu_mem_gb, context_gb),
            "pflop_per_step": p.flops_per_step / 1e15, "mfu": mfu, "peak_tflops": peak_tflops, "step_s": step_s}


def render(r: dict) -> str:
    n = r["params"]
    size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"  # a tiny model is not "0.00B"
    lines = [f"model {size} params ({n:,}; vocabulary {r['vocab_size']:,}, "
             f"{r['vocab_source']}), {r['gpus']} GPU(s), sharded over {r['shard']}, {r['mixed_precision']}, "
             f"activation checkpointing {r['activation_checkpointing']}, {r['tokens_per_micro_batch']} tokens "
             f"per micro-batch, accumulation {r['grad_accum']}",
             "per GPU:"]
    if r.get("lora"):
        lo = r["lora"]
        base = "in NF4 (adapted linears)" if lo["quantize_base"] == "nf4" else "in the compute dtype"
        lines.insert(1, f"LoRA r {lo['rank']} on {', '.join(lo['targets'])}: {lo['trainable_params']:,} trainable "
                        f"parameters; frozen base {base}")
    lines += [f"  {k:<16} {v:8.2f} GB" for k, v in r["terms_gb"].items()]
    lines.append(f"  {'total':<16} {r['total_gb']:8.2f} GB of {r['gpu_mem_gb']:.0f} GB: "
                 + ("fits" if r["fits"] else "DOES NOT FIT"))
    lines += [f"per rank, host memory: {k} {v:.2f} GB" for k, v in r.get("host_gb", {}).items()]
    if not r["fits"]:
        lines.append(f"  smallest change that fits: {r['smallest_fix'] or 'none found (more GPUs of more memory)'}")
    lines.append(f"step: {r['pflop_per_step']:.2f} PFLOP (model FLOPs, all GPUs)")
    if r["step_s"] is not None:
        lines.append(f"  at {100 * r['mfu']:.0f}% MFU of {r['peak_tflops']:.0f} TFLOP/s per GPU: "
                     f"{r['step_s']:.2f} s per step")
    return "\n".join(lines)


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
    if cfg.lora is not None and info.device.type != "cuda":
        _drop_load_transients()
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


def _drop_load_transients() -> None:
    """A LoRA build reads the whole base checkpoint into host memory (and NF4 quantises from it):
    a loading phase the plan does not model. Hand the freed heap back to the OS (glibc keeps it
    resident otherwise) and restart the peak from the built model, so the peak is the steps'."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak then includes what it kept
        pass
    Path("/proc/self/clear_refs").write_text("5")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in the job (default 8; WORLD_SIZE with --measure)")
    parser.add_argument("--gpu", default="a100", help="a100 (80 GB) | a100-40 | h100 | h200")
    parser.add_argument("--gpu-mem-gb", type=float, default=None, help="overrides --gpu's memory")
    parser.add_argument("--model", default=None, help="a model preset standing in for model.init_from")
    parser.add_argument("--mfu", type=float, default=0.4, help="MFU for the step-time bound")
    parser.add_argument("--measure", action="store_true", help="also run 3 steps here and measure the peak")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, as for python -m train")
    ns = parser.parse_args(argv)

    from train.config import ConfigError, load_config
    from train.plan import GPUS, PEAK_TFLOPS, plan

    try:
        cfg = load_config(ns.config, ns.overrides)
        if ns.gpu not in GPUS:
            raise ConfigError(f"--gpu {ns.gpu}: known GPUs are {', '.join(GPUS)} (or give --gpu-mem-gb)")
        args, vocab_source = _model_args(cfg, ns.model)
        gpus = ns.gpus or (int(os.environ.get("WORLD_SIZE", "1")) if ns.measure else 8)
        plan(cfg, args, gpus)  # raises on an impossible layout
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mem = ns.gpu_mem_gb or GPUS[ns.gpu]
    if not ns.measure:
        r = report(cfg, args, gpus, mem, ns.mfu, PEAK_TFLOPS[ns.gpu], context_gb=1.5, vocab_source=vocab_source)
        print(json.dumps({"config": ns.config, "overrides": ns.overrides, **r}) if ns.json else render(r))
        return 0 if r["fits"] else 1
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
               "params": args.num_params(), "vocab_size": args.vocab_size, "vocab_source": vocab_source,
               "terms_gb": {k: round(v / 1e9, 3) for k, v in predicted.terms.items()}, "kind": measured["kind"]}
        print(json.dumps(row) if ns.json else "\n".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
