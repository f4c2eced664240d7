"""Generated tokens per second: our batched decoding (model.sampling.generate_batch) against
transformers' `generate` on the same weights, exported with `tools.convert to-hf`.

    python -m tools.bench_generate [--batch-size 16 --max-new-tokens 64 --rounds 3]
                                   [--dim 512 --n-layers 8 --n-heads 8 --n-kv-heads 8 --vocab 32000]

A random-weight model of the given shape is saved as a project checkpoint, exported to HF format,
and both are run greedy on the same left-padded batch of prompts of random lengths, with no stop
token (every row generates exactly --max-new-tokens), in alternating rounds after one warm-up each,
so drifting machine load hits both alike. Prints one JSON line (median tokens/s each, the speedup,
and how many rows produced identical tokens) and a markdown table. transformers is a dev
dependency only; it is imported here, when the benchmark runs.

Exit status: 0 measured; 2 bad arguments or transformers missing, one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def build_models(ns, root: Path):
    """(ours, hf): one random model, ours loaded from its checkpoint, hf from the to-hf export."""
    from transformers import LlamaForCausalLM

    from model.args import ModelArgs
    from model.checkpoint import load_model, save_checkpoint
    from model.llama import Transformer
    from tools.convert import main as convert

    torch.manual_seed(0)
    args = ModelArgs(dim=ns.dim, n_layers=ns.n_layers, n_heads=ns.n_heads, n_kv_heads=ns.n_kv_heads,
                     vocab_size=ns.vocab, max_seq_len=1024)
    model = Transformer(args)
    model.init_weights()
    save_checkpoint(model.state_dict(), args, root / "ckpt")
    if convert(["to-hf", str(root / "ckpt"), str(root / "hf")]) != 0:
        raise SystemExit(2)
    hf = LlamaForCausalLM.from_pretrained(root / "hf", dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # no stop token: both generate every requested token
    return load_model(root / "ckpt"), hf


def prompts_of(ns) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(ns.min_prompt, ns.max_prompt + 1, (ns.batch_size,), generator=g).tolist()
    return [[1] + torch.randint(3, ns.vocab, (n - 1,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def run_ours(model, prompts, ns) -> tuple[float, list[list[int]]]:
    from model.sampling import generate_batch

    t0 = time.perf_counter()
    out = generate_batch(model, prompts, ns.max_new_tokens, eos_id=None)
    return time.perf_counter() - t0, out


@torch.no_grad()
def run_hf(hf, prompts, ns) -> tuple[float, list[list[int]]]:
    T = max(map(len, prompts))
    x = torch.tensor([[0] * (T - len(p)) + p for p in prompts])  # (B, T), left-padded
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    t0 = time.perf_counter()
    out = hf.generate(x, attention_mask=mask, max_new_tokens=ns.max_new_tokens, min_new_tokens=ns.max_new_tokens,
                      do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0, out[:, T:].tolist()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench_generate", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-prompt", type=int, default=16, help="prompt lengths are uniform in [min, max]")
    p.add_argument("--max-prompt", type=int, default=96)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each, alternating")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if min(ns.batch_size, ns.max_new_tokens, ns.rounds, ns.min_prompt) < 1 or ns.max_prompt < ns.min_prompt \
            or ns.max_prompt + ns.max_new_tokens > 1024:
        print("error: need positive sizes, --min-prompt <= --max-prompt, and prompt + new tokens <= 1024",
              file=sys.stderr)
        return 2
    try:
        import transformers
    except ImportError:
        print("error: the benchmark compares against transformers, a dev dependency: "
              "pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ours, hf = build_models(ns, Path(tmp))
    prompts = prompts_of(ns)
    run_ours(ours, prompts, ns), run_hf(hf, prompts, ns)  # warm-up: allocation, first-call paths
    times: dict[str, list[float]] = {"ours": [], "hf": []}
    for _ in range(ns.rounds):
        t, ours_out = run_ours(ours, prompts, ns)
        times["ours"].append(t)
        t, hf_out = run_hf(hf, prompts, ns)
        times["hf"].append(t)
    n_tokens = ns.batch_size * ns.max_new_tokens
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    result = {"batch_size": ns.batch_size, "max_new_tokens": ns.max_new_tokens,
              "prompt_lengths": [min(map(len, prompts)), max(map(len, prompts))],
              "model": {"dim": ns.dim, "n_layers": ns.n_layers, "n_heads": ns.n_heads,
                        "n_kv_heads": ns.n_kv_heads, "vocab": ns.vocab},
              "ours_tokens_per_s": round(tps["ours"], 1), "transformers_tokens_per_s": round(tps["hf"], 1),
              "speedup": round(tps["ours"] / tps["hf"], 2), "rounds": ns.rounds,
              "identical_rows": sum(a == b for a, b in zip(ours_out, hf_out, strict=True)),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads()}
    print(json.dumps(result))
    print(f"\n| generator | tokens/s (median of {ns.rounds}) | seconds per batch |\n|---|---|---|")
    print(f"| ours (model.sampling.generate_batch) | {tps['ours']:.1f} | {statistics.median(times['ours']):.2f} |")
    print(f"| transformers {transformers.__version__} generate | {tps['hf']:.1f} | "
          f"{statistics.median(times['hf']):.2f} |")
    print(f"\nspeedup {result['speedup']}x; {result['identical_rows']} of {ns.batch_size} rows token-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
