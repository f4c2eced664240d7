"""`make gpu-check`: the GPU checks in one script, one markdown table, <= 8 minutes on one GPU.

    python3 -m tools.gpu_check                 # CUDA: training benchmarks, decode, the CUDA tests
    python3 -m tools.gpu_check --quick         # the three most informative cases, < 4 minutes
    python3 -m tools.gpu_check --cpu           # reduced shapes on the CPU (CI runs this)

Needs only a preinstalled torch (2.11+), numpy and pyyaml; no network, no pip, no .venv (the
Makefile target uses the system python3). What it does:

1. Training benchmarks through the real step (`train.step.train_step` on the FSDP2-wrapped model,
   world 1) in bf16, on packed or padded real data (../shared/data, else --data/--tokenizer; with
   neither, random documents of Alpaca-like lengths, marked "synthetic"): a 7B-shaped slice (dim
   4096, 32 heads, hidden 11008, --slice-layers layers) packed compiled with activation
   checkpointing none / selective / full, packed eager and padded eager; the ~1B config
   (configs/bench_1b.yaml's shape) packed eager and packed compiled with selective checkpointing.
   Each row: real tokens/s, model TFLOP/s and MFU (attention per document), peak memory
   (max_memory_allocated) beside tools.plan's prediction, and the case's wall time.
2. Decode: a 7B-shaped model (32 layers) in bf16, batch 1, KV cache: tokens/s and the share of
   the memory-bandwidth bound (weights bytes per token / the GPU's bandwidth).
3. The CUDA tests (tests/*: flex attention forward/backward, decode kernels, the bf16 loop)
   through pytest when it is installed (last, and not in --quick).

--quick runs the 1B config, the 7B slice packed + compiled + selective checkpointing, and decode
(with --cpu, the CPU stand-ins of those). Every case runs in a child process (`--case KEY`) under
a time limit (--case-timeout) and inside the run's budget (--budget): a case that runs over,
fails, or finds the budget spent is a row saying so and the run goes on. Each row is printed when
its case ends and written to OUT/table.md (rewritten atomically) and OUT/rows.jsonl, so a killed
run keeps every finished row; OUT/logs/ has each case's output. Exit status: 0 when every case
gave its numbers (and the tests passed), 1 when a row is a failure, a timeout or not run, 2
without CUDA (and without --cpu).

Time on one H200 -- an ESTIMATE (no GPU was lent to the session that wrote this; the table's
"case s" column measures it on the first run): full run ~7.3 min, --quick ~2.4 min, both cold.
Method: each case = a child process start (python, torch, CUDA context, NCCL group of one, model
init: assumed 10 s) + compiles + 9 steps. The steps are negligible: ~46 TFLOP per 8192-token step
for either model (6 x ~0.9e9 non-embedding parameters x 8192), ~0.15 s at an assumed 30% MFU of
989 TFLOP/s, so ~2 s a case. Compiles dominate, assumed cold 60 s for a decoder layer's forward +
backward graph (flex kernels inside), 30 s for the same shape under another checkpointing policy
(new graph; most Triton kernels, the flex templates included, are then in the on-disk cache),
30 s for eager flex forward + backward at a new head count, 15 s at a seen one; 5 s for the first
tokenization of the data. Full: 7B selective 77 + none 42 + full 42 + packed eager 27 + padded
eager 12 + 1B packed eager 42 + 1B compiled 72 + decode 17 (6.7B init, 136 tokens at an assumed
~40 tok/s) + CUDA tests 100 (two flex compiles, a torchrun bf16 run) + parent 5 = ~436 s. Quick:
47 + 72 + 17 + 5 = ~141 s. After --quick in the same session the full run reuses its compiled
graphs (~6.1 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from tools.case_runner import Report, case_limits, run_child

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# HBM bandwidth, TB/s, keyed by the exact `torch.cuda.get_device_name` string (NVIDIA datasheets):
# PCIe and NVL parts differ from the SXM part of the same chip. Anything else gets no bound.
BANDWIDTH_TBS = {
    "NVIDIA H100 80GB HBM3": 3.35,  # H100 SXM5
    "NVIDIA H100 PCIe": 2.0,
    "NVIDIA H100 NVL": 3.9,
    "NVIDIA H200": 4.8,
    "NVIDIA H200 NVL": 4.8,
    "NVIDIA A100-SXM4-80GB": 2.039,
    "NVIDIA A100-SXM4-40GB": 1.555,
    "NVIDIA A100 80GB PCIe": 1.935,
    "NVIDIA A100-PCIE-40GB": 1.555,
}
COLUMNS = ["case", "data", "tok/s", "TFLOP/s", "MFU", "loss", "peak GB", "plan GB", "case s", "note"]


def bandwidth_tbs(device_name: str) -> float | None:
    """HBM TB/s of the GPU named exactly `device_name` (as torch reports it), else None."""
    return BANDWIDTH_TBS.get(device_name.strip())


@dataclasses.dataclass
class Shapes:
    """What one mode benchmarks: model shapes, tokens per micro-batch, steps."""

    models: dict  # short name -> (row label, ModelArgs fields)
    pack_len: int
    micro: int
    steps: int
    warmup: int
    decode_args: dict
    decode_tokens: int


def shapes(cpu: bool, slice_layers: int) -> Shapes:
    if cpu:
        tiny = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, multiple_of=16, max_seq_len=512)
        return Shapes({"tiny": ("tiny GQA (CPU stand-in)", tiny)},
                      pack_len=256, micro=2, steps=2, warmup=1, decode_args=tiny, decode_tokens=16)
    b1 = dict(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, multiple_of=256, norm_eps=1e-5, max_seq_len=2048)
    s7 = dict(dim=4096, n_layers=slice_layers, n_heads=32, vocab_size=32000, multiple_of=256, norm_eps=1e-5,
              max_seq_len=2048)
    return Shapes({"7b": (f"7B slice ({slice_layers} layers)", s7), "1b": ("1B (bench_1b)", b1)}, pack_len=2048,
                  micro=4, steps=6, warmup=3, decode_args={**s7, "n_layers": 32}, decode_tokens=128)


# (model, layout, compile, activation checkpointing), in run order: the cases that matter most come
# first, and the compiled cases of one shape follow each other, so a run cut short by its budget
# loses the least and the second policy of a shape finds its Triton kernels in the on-disk cache.
CASES = [("7b", "packed", True, "selective"), ("7b", "packed", True, "none"), ("7b", "packed", True, "full"),
         ("7b", "packed", False, "none"), ("7b", "padded", False, "none"),
         ("1b", "packed", False, "none"), ("1b", "packed", True, "selective")]
# --quick: the 1B config as configs/bench_1b.yaml trains it, then the 7B slice's target case.
QUICK = [("1b", "packed", False, "none"), ("7b", "packed", True, "selective")]
# The CPU run exercises each path once: one compile (with selective checkpointing), full AC eager.
CPU_CASES = [("tiny", "padded", False, "none"), ("tiny", "packed", False, "none"),
             ("tiny", "packed", True, "selective"), ("tiny", "packed", False, "full")]
CPU_QUICK = [("tiny", "packed", False, "none"), ("tiny", "packed", True, "selective")]


def case_key(case: tuple) -> str:
    """The case's name on the command line (--case, --case-timeout KEY=S), e.g. 7b-packed-compiled-selective."""
    model, layout, compiled, ac = case
    return f"{model}-{layout}-{'compiled' if compiled else 'eager'}-{ac}"


def case_list(cpu: bool, quick: bool) -> list[str]:
    train = (CPU_QUICK if quick else CPU_CASES) if cpu else (QUICK if quick else CASES)
    if cpu and not shutil.which(os.environ.get("CXX", "g++")):
        train = [c for c in train if not c[2]]  # inductor's CPU backend needs a C++ compiler
    return [case_key(c) for c in train] + ["decode"]


def make_loader(cfg, micro: int, data: str | None, tokenizer: str | None):
    """The project's loader over real data, or None (then random documents are used)."""
    data = data or (str(SHARED / "gsm8k_alpaca.json") if (SHARED / "gsm8k_alpaca.json").is_file() else None)
    tokenizer = tokenizer or (str(SHARED / "llama2_tokenizer.model") if data else None)
    if not data or not tokenizer or not Path(tokenizer).is_file():
        return None
    from data.loader import AlpacaLoader
    from model.tokenizer import load_tokenizer

    cfg.data = dataclasses.replace(cfg.data, paths=[data], num_proc=1)
    return iter(AlpacaLoader(cfg.data, load_tokenizer(tokenizer), micro, 0, 1, 0))


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



def run_steps(cfg, args, info, batches, n: int, device) -> list:
    """Train `n` steps on a fresh model; [(train_step's result, seconds)]. The only place that calls
    the trainer's API (model, optimizer, scheduler, batch preparation, step), so it is one edit."""
    from train.build import build_training
    from train.step import prepare_step, train_step

    model, optimizer, scheduler = build_training(cfg, args, info, n)
    out = []
    for _ in range(n):
        step_batches = prepare_step([next(batches)], device, cfg.parallel.attention)
        t0 = time.perf_counter()
        r = train_step(model, optimizer, scheduler, step_batches, grad_clip=1.0)
        out.append((r, time.perf_counter() - t0))  # train_step ends with its one host sync
    return out


def bench_train(label: str, fields: dict, layout: str, compiled: bool, ac: str, sh: Shapes, device, info,
                data: str | None, tokenizer: str | None) -> dict:
    import gc

    import torch

    from data.config import DataConfig
    from model.args import ModelArgs
    from train.config import TrainConfig
    from train.metrics import model_flops, peak_flops
    from train.plan import plan

    args = ModelArgs.from_dict(fields)
    cfg = TrainConfig(output_dir="/tmp/gpu_check", max_steps=sh.steps + sh.warmup)
    cfg.model.args = fields
    cfg.parallel = dataclasses.replace(cfg.parallel, mixed_precision="bf16" if device.type == "cuda" else "fp32",
                                       activation_checkpointing=ac, compile=compiled)
    cfg.data = DataConfig(paths=["-"], packing=layout == "packed", pack_len=sh.pack_len,
                          max_len=min(513, sh.pack_len + 1), cache_dir="/tmp/gpu_check_data")
    cfg.batch.micro_batch_size = sh.micro
    batches = make_loader(cfg, sh.micro, data, tokenizer)
    source = "real" if batches is not None else "synthetic"
    batches = batches or random_batches(cfg, sh.micro, args.vocab_size)
    if device.type == "cuda":
        # FSDP2 leaves reference cycles: collect them first, or freed tensors count in this peak.
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    measured = run_steps(cfg, args, info, batches, sh.warmup + sh.steps, device)[sh.warmup:]
    elapsed = sum(dt for _, dt in measured)
    tokens = sum(r.tokens for r, _ in measured)
    pairs = sum(r.attention_pairs for r, _ in measured)
    targets = sum(r.targets for r, _ in measured)
    flops = model_flops(args, tokens, pairs, targets) / elapsed
    peak = peak_flops(device)
    predicted = plan(cfg, args, 1, context_gb=0.0).total / 1e9
    mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"case": f"{label}: {layout}, {'compiled' if compiled else 'eager'}, AC {ac}", "data": source,
            "tok/s": f"{tokens / elapsed:,.0f}", "TFLOP/s": f"{flops / 1e12:.1f}",
            "MFU": f"{100 * flops / peak:.1f}%" if peak else "", "loss": f"{measured[-1][0].loss:.3f}",
            "peak GB": f"{mem:.1f}" if mem is not None else "", "plan GB": f"{predicted:.1f}"}


def bench_decode(fields: dict, n_tokens: int, device) -> dict:
    import torch

    from model.args import ModelArgs
    from model.llama import Transformer
    from model.sampling import generate
    from train.metrics import matmul_params

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
    # Bytes read per token: every weight but the input embedding, of which one row is read.
    weight_bytes = matmul_params(args) * (2 if dtype == torch.bfloat16 else 4)
    bound = ""
    if device.type == "cuda":
        bw = bandwidth_tbs(torch.cuda.get_device_name(device))
        if bw:
            bound = f"{100 * tps / (bw * 1e12 / weight_bytes):.0f}% of {bw * 1e12 / weight_bytes:.0f} tok/s"
    del model
    return {"case": f"decode {args.num_params() / 1e9:.2f}B, batch 1, KV cache, {str(dtype)[6:]}", "data": "",
            "tok/s": f"{tps:,.1f}", "TFLOP/s": "", "MFU": bound, "loss": "", "peak GB": "",
            "plan GB": ""}


def run_case(key: str, ns) -> dict:
    """One case in this process (the child side of --case): its row without the timing columns."""
    import torch

    sh = shapes(ns.cpu, ns.slice_layers)
    if key == "decode":
        device = torch.device("cuda" if not ns.cpu else "cpu")
        return bench_decode(sh.decode_args, sh.decode_tokens, device)
    from train.distributed import init_distributed

    model, layout, compiled, ac = key.split("-")
    label, fields = sh.models[model]
    info = init_distributed()
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    row = bench_train(label, fields, layout, compiled == "compiled", ac, sh, info.device, info,
                      ns.data, ns.tokenizer)
    torch.distributed.destroy_process_group()
    return row


def case_label(key: str, sh: Shapes) -> str:
    if key == "decode":
        return f"decode ({sh.decode_args['n_layers']}-layer model of the {sh.decode_args['dim']}-dim shape)"
    if key == "cuda-tests":
        return "CUDA tests (pytest)"
    model, layout, compiled, ac = key.split("-")
    return f"{sh.models[model][0]}: {layout}, {compiled}, AC {ac}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 measured; 2 no CUDA device without --cpu, or bad arguments.")
    parser.add_argument("--cpu", action="store_true", help="reduced shapes on the CPU (no CUDA kernels)")
    parser.add_argument("--quick", action="store_true", help="only the 1B config, the 7B slice compiled + "
                        "selective AC, and decode (no CUDA tests): < 4 minutes on one H200")
    parser.add_argument("--slice-layers", type=int, default=4, help="layers of the 7B-shaped slice")
    parser.add_argument("--data", default=None, help="Alpaca-format JSON (default ../shared/data/gsm8k_alpaca.json)")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"),
                        help="table.md, rows.jsonl, logs/ and the compile cache go here")
    parser.add_argument("--case-timeout", action="append", default=[], metavar="[KEY=]SECONDS",
                        help="time limit of every case (default 180 on CUDA, 600 on CPU; the CUDA tests get at "
                             "least 300), or of the case KEY (e.g. 7b-packed-compiled-selective, decode, cuda-tests)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 480, --quick 240, --cpu none); a case gets "
                             "at most what is left, and once it is spent the rest are rows saying so")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child side: run this one case
    parser.add_argument("--result", help=argparse.SUPPRESS)  # child side: its row goes to this file
    ns = parser.parse_args(argv)
    if ns.case:
        Path(ns.result).write_text(json.dumps(run_case(ns.case, ns)))
        return 0

    import torch

    if not ns.cpu and not torch.cuda.is_available():
        print("error: no CUDA device (use --cpu for the reduced CPU run)", file=sys.stderr)
        return 2
    # A child process per case: a hung kernel or compile can only be stopped by killing its
    # process, and each case's peak memory is then its own. What children share is on disk: the
    # inductor FX graph and AOTAutograd caches and the Triton kernels (a --quick run warms a full one).
    out = Path(ns.out).resolve()
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out / "compile_cache"))
    env.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    env.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a terminated run kills its child too
    sh = shapes(ns.cpu, ns.slice_layers)
    budget = ns.budget if ns.budget is not None else 0 if ns.cpu else 240 if ns.quick else 480
    default_limit, per_case = case_limits(ns.case_timeout, 600 if ns.cpu else 180)
    passthrough = (["--cpu"] if ns.cpu else []) + ["--slice-layers", str(ns.slice_layers)]
    passthrough += (["--data", ns.data] if ns.data else []) + (["--tokenizer", ns.tokenizer] if ns.tokenizer else [])
    run_tests = not (ns.cpu or ns.quick or ns.skip_tests)
    dev = torch.cuda.get_device_name(0) if not ns.cpu else "CPU (reduced shapes)"
    title = f"## gpu-check{' --quick' if ns.quick else ''} on {dev}, torch {torch.__version__}"
    report = Report(out, title, COLUMNS)
    start, ok = time.perf_counter(), True
    for key in case_list(ns.cpu, ns.quick) + (["cuda-tests"] if run_tests else []):
        row = {"case": case_label(key, sh)}
        limit = per_case.get(key, max(default_limit, 300) if key == "cuda-tests" else default_limit)
        left = budget - (time.perf_counter() - start) if budget else float("inf")
        if left < 5:
            report.add({**row, "note": f"not run: the run's {budget:g} s budget is spent"})
            ok = False
            continue
        why = f"timeout after {min(limit, left):.3g} s" + (" (the run's budget)" if left < limit else "")
        if key == "cuda-tests":
            import importlib.util

            if importlib.util.find_spec("pytest") is None:
                report.add({**row, "note": "not run: pytest is not installed here"})
                continue
            cmd = [sys.executable, "-m", "pytest", "-q", "-k", "cuda or gpu or CUDA",
                   "tests/test_attention_packed.py", "tests/test_train_cuda.py"]
        else:
            result = out / "logs" / f"{key}.json"
            result.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "tools.gpu_check", "--case", key, "--result", str(result), *passthrough]
        print(f"  {key}: limit {min(limit, left):.3g} s", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc, last = run_child(cmd, min(limit, left), out / "logs" / f"{key}.log", env, ROOT)
        if key == "cuda-tests":
            row["note"] = why if rc is None else last
        elif rc == 0:
            row = json.loads(result.read_text())
        else:
            row["note"] = why if rc is None else f"failed (exit {rc}): {last}"
        ok = ok and rc == 0
        report.add({**row, "case s": f"{time.perf_counter() - t0:.0f}"})
    if not run_tests:
        print("\nCUDA tests: not run (--cpu, --quick or --skip-tests)")
    print(f"\n{len(report.rows)} rows in {time.perf_counter() - start:.0f} s: {out / 'table.md'}, logs in {out / 'logs'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
