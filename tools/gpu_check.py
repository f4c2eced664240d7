"""`make gpu-check`: the GPU checks in one script, one markdown table, <= 8 minutes on one GPU.

    python3 -m tools.gpu_check                 # CUDA: the CUDA tests, training benchmarks, decode
    python3 -m tools.gpu_check --cpu           # reduced shapes on the CPU (CI runs this)

Needs only a preinstalled torch (2.11+), numpy and pyyaml; no network, no pip, no .venv (the
Makefile target uses the system python3). What it does:

1. The CUDA tests (tests/*: flex attention forward/backward, decode kernels, the bf16 loop)
   through pytest when it is installed; otherwise the table says they were not run.
2. Training benchmarks through the real step (`train.step.train_step` on the FSDP2-wrapped model,
   world 1) in bf16, on packed or padded real data (../shared/data, else --data/--tokenizer; with
   neither, random documents of Alpaca-like lengths, marked "synthetic"):
   the ~1B config (configs/bench_1b.yaml's shape) and a 7B-shaped slice (dim 4096, 32 heads,
   hidden 11008, --slice-layers layers), each padded vs packed, eager vs compiled, activation
   checkpointing none / selective / full. Each row: real tokens/s, model TFLOP/s and MFU
   (attention per document), peak memory (max_memory_allocated) beside tools.plan's prediction.
3. Decode: a 7B-shaped model (32 layers) in bf16, batch 1, KV cache: tokens/s and the share of
   the memory-bandwidth bound (weights bytes per token / the GPU's bandwidth).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# HBM bandwidth, TB/s (vendor datasheets, SXM parts); anything else gets no bound.
BANDWIDTH_TBS = {"H200": 4.8, "H100": 3.35, "A100-SXM4-80GB": 2.04, "A100-SXM4-40GB": 1.56}


@dataclasses.dataclass
class Shapes:
    """What one mode benchmarks: model shapes, tokens per micro-batch, steps."""

    models: dict  # name -> ModelArgs fields
    pack_len: int
    micro: int
    steps: int
    warmup: int
    decode_args: dict
    decode_tokens: int


def shapes(cpu: bool, slice_layers: int) -> Shapes:
    if cpu:
        tiny = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, multiple_of=16, max_seq_len=512)
        return Shapes({"tiny GQA (CPU stand-in)": tiny},
                      pack_len=256, micro=2, steps=2, warmup=1, decode_args=tiny, decode_tokens=16)
    b1 = dict(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, multiple_of=256, norm_eps=1e-5, max_seq_len=2048)
    s7 = dict(dim=4096, n_layers=slice_layers, n_heads=32, vocab_size=32000, multiple_of=256, norm_eps=1e-5,
              max_seq_len=2048)
    return Shapes({"1B (bench_1b)": b1, f"7B slice ({slice_layers} layers)": s7}, pack_len=2048, micro=4,
                  steps=6, warmup=3, decode_args={**s7, "n_layers": 32}, decode_tokens=128)


# (layout, compile, activation checkpointing): padded vs packed, compile on/off, AC policies.
CASES = [("padded", False, "none"), ("packed", False, "none"), ("packed", True, "none"),
         ("packed", True, "selective"), ("packed", True, "full")]
# The CPU run exercises each path once: one compile (with selective checkpointing), full AC eager.
CPU_CASES = [("padded", False, "none"), ("packed", False, "none"), ("packed", True, "selective"),
             ("packed", False, "full")]


def run_cuda_tests() -> str:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return "not run: pytest is not installed here"
    tests = ["tests/test_attention_packed.py", "tests/test_train_cuda.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda or gpu or CUDA", *tests],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return (proc.stdout.strip().splitlines() or ["(no output)"])[-1]


def make_loader(cfg, micro: int, data: str | None, tokenizer: str | None):
    """The project's loader over real data, or None (then random documents are used)."""
    data = data or (str(SHARED / "gsm8k_alpaca.json") if (SHARED / "gsm8k_alpaca.json").is_file() else None)
    tokenizer = tokenizer or (str(SHARED / "llama2_tokenizer.model") if data else None)
    if not data or not tokenizer or not Path(tokenizer).is_file():
        return None
    from data.loader import AlpacaLoader
    from model.tokenizer import Tokenizer

    cfg.data = dataclasses.replace(cfg.data, paths=[data], num_proc=1)
    return iter(AlpacaLoader(cfg.data, Tokenizer(tokenizer), micro, 0, 1, 0))


def random_batches(cfg, micro: int, vocab: int):
    """Rows of random documents of Alpaca-like lengths (64-500 tokens) when no real data is here."""
    import torch

    from data.collate import collate_padded, collate_rows

    g = torch.Generator().manual_seed(0)
    pack = cfg.data.packing

    def example():  # (tokens, labels) of one document, labels already shifted
        n = int(torch.randint(64, min(500, cfg.data.max_len - 1), (1,), generator=g))
        ids = torch.randint(3, vocab, (n + 1,), generator=g).tolist()
        return ids[:-1], ids[1:]

    while True:
        if pack:
            rows, row, used = [], [], 0
            while len(rows) < micro:
                ex = example()
                if used + len(ex[0]) > cfg.data.pack_len:
                    rows.append(row)
                    row, used = [], 0
                row.append(ex)
                used += len(ex[0])
            yield collate_rows(rows, cfg.data.pack_len, 0)
        else:
            yield collate_padded([example() for _ in range(micro)], 0)


def bench_train(name: str, fields: dict, layout: str, compiled: bool, ac: str, sh: Shapes, device, info, mesh,
                data: str | None, tokenizer: str | None) -> dict:
    import torch

    from model.args import ModelArgs
    from train.config import TrainConfig
    from train.loop import build_model
    from train.metrics import model_flops, peak_flops
    from train.optim import build_optimizer, build_scheduler
    from train.plan import plan
    from train.step import prepare_batch, train_step

    args = ModelArgs.from_dict(fields)
    cfg = TrainConfig(output_dir="/tmp/gpu_check", max_steps=sh.steps + sh.warmup)
    cfg.model.args = fields
    cfg.parallel = dataclasses.replace(cfg.parallel, mixed_precision="bf16" if device.type == "cuda" else "fp32",
                                       activation_checkpointing=ac, compile=compiled)
    from data.config import DataConfig

    cfg.data = DataConfig(paths=["-"], packing=layout == "packed", pack_len=sh.pack_len,
                          max_len=min(513, sh.pack_len + 1), cache_dir="/tmp/gpu_check_data")
    cfg.batch.micro_batch_size = sh.micro
    batches = make_loader(cfg, sh.micro, data, tokenizer)
    source = "real" if batches is not None else "synthetic"
    batches = batches or random_batches(cfg, sh.micro, args.vocab_size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg, args, mesh, info)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, sh.steps + sh.warmup)
    tokens = pairs = targets = 0
    elapsed = 0.0
    for i in range(sh.warmup + sh.steps):
        mb = [prepare_batch(next(batches), device, cfg.parallel.attention)]
        t0 = time.perf_counter()
        r = train_step(model, optimizer, scheduler, mb, cfg.parallel, 1.0, None, device)
        dt = time.perf_counter() - t0  # train_step ends with its one host sync
        if i >= sh.warmup:
            tokens, pairs, elapsed = tokens + r.tokens, pairs + r.attention_pairs, elapsed + dt
            targets += r.targets
    flops = model_flops(args, tokens, pairs, targets) / elapsed
    peak = peak_flops(device)
    predicted = plan(cfg, args, 1, context_gb=0.0).total / 1e9
    mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    del model, optimizer, scheduler
    return {"case": f"{name}: {layout}, {'compiled' if compiled else 'eager'}, AC {ac}", "data": source,
            "tok/s": f"{tokens / elapsed:,.0f}", "TFLOP/s": f"{flops / 1e12:.1f}",
            "MFU": f"{100 * flops / peak:.1f}%" if peak else "", "loss": f"{r.loss:.3f}",
            "peak GB": f"{mem:.1f}" if mem is not None else "", "plan GB": f"{predicted:.1f}"}


def bench_decode(fields: dict, n_tokens: int, device) -> dict:
    import torch

    from model.args import ModelArgs
    from model.llama import Transformer
    from model.sampling import generate

    args = ModelArgs.from_dict(fields)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    torch.manual_seed(0)
    model.init_weights()
    model.to(dtype).eval()
    prompt = list(range(10, 74))
    with torch.no_grad():
        generate(model, prompt, 8)  # warm-up: cache set-up, kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate(model, prompt, n_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
    tps = len(out) / (time.perf_counter() - t0)
    weight_bytes = args.num_params() * (2 if dtype == torch.bfloat16 else 4)
    bound = ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        bw = next((v for k, v in BANDWIDTH_TBS.items() if k in name), None)
        if bw:
            bound = f"{100 * tps / (bw * 1e12 / weight_bytes):.0f}% of {bw * 1e12 / weight_bytes:.0f} tok/s"
    del model
    return {"case": f"decode {args.num_params() / 1e9:.2f}B, batch 1, KV cache, {str(dtype)[6:]}", "data": "",
            "tok/s": f"{tps:,.1f}", "TFLOP/s": "", "MFU": bound, "loss": "", "peak GB": "", "plan GB": ""}


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 measured; 2 no CUDA device without --cpu, or bad arguments.")
    parser.add_argument("--cpu", action="store_true", help="reduced shapes on the CPU (no CUDA kernels)")
    parser.add_argument("--slice-layers", type=int, default=4, help="layers of the 7B-shaped slice")
    parser.add_argument("--data", default=None, help="Alpaca-format JSON (default ../shared/data/gsm8k_alpaca.json)")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--skip-tests", action="store_true")
    ns = parser.parse_args(argv)

    import torch

    if not ns.cpu and not torch.cuda.is_available():
        print("error: no CUDA device (use --cpu for the reduced CPU run)", file=sys.stderr)
        return 2
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/gpu_check_inductor")
    from train import parallel
    from train.config import ParallelConfig

    info = parallel.init_distributed()
    device = info.device
    mesh = parallel.build_mesh(ParallelConfig(), info)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sh = shapes(ns.cpu, ns.slice_layers)
    start = time.perf_counter()
    tests = "skipped (--skip-tests)" if ns.skip_tests or ns.cpu else run_cuda_tests()
    rows = []
    for name, fields in sh.models.items():
        for layout, compiled, ac in (CPU_CASES if ns.cpu else CASES):
            if compiled and not shutil.which(os.environ.get("CXX", "g++")) and device.type == "cpu":
                continue  # inductor's CPU backend needs a C++ compiler
            rows.append(bench_train(name, fields, layout, compiled, ac, sh, device, info, mesh, ns.data, ns.tokenizer))
            print(f"  {rows[-1]['case']}: {rows[-1]['tok/s']} tok/s", file=sys.stderr, flush=True)
            torch._dynamo.reset()
    rows.append(bench_decode(sh.decode_args, sh.decode_tokens, device))
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (reduced shapes)"
    print(f"## gpu-check on {dev}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s\n")
    print(f"CUDA tests: {tests}\n")
    print(table(rows))
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
