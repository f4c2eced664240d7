"""Packed-row attention backends side by side, on real packed rows: forward + backward time of the
whole model for each exact backend of model/attention.py (and `causal`, which is NOT exact for
packed rows: it lets examples see each other; it is the lower bound a mask can cost).

    python -m tools.bench_attention --data ../shared/data/gsm8k_alpaca.json \
        --tokenizer ../shared/data/llama2_tokenizer.model [--pack-len 1024] [--rows 1] \
        [--dim 256 --n-layers 4 --n-heads 8 --n-kv-heads 8] [--backends dense documents causal]

Prints one JSON line per backend: median seconds per forward+backward over --steps after --warmup.
This is how the CPU default of `build_attention(backend="auto")` was chosen (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
import torch.nn.functional as F


def packed_batches(ns) -> list[dict]:
    from data.alpaca import IGNORE_INDEX, load_records, tokenize_example
    from data.collate import collate_packed
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(ns.tokenizer)
    examples = []
    for rec in load_records(ns.data)[: ns.examples]:
        ex = tokenize_example(tok, rec, max_len=ns.max_len)
        if ex is not None:
            examples.append(ex)
    batch = collate_packed(examples, ns.pack_len, tok.pad_id)
    assert IGNORE_INDEX == -100
    # Micro-batches of --rows full packed rows each (the last, partial row dropped).
    n = (batch.tokens.shape[0] - 1) // ns.rows
    keys = ("tokens", "labels", "positions", "document_ids")
    return [dataclasses.replace(batch, **{k: getattr(batch, k)[i * ns.rows:(i + 1) * ns.rows] for k in keys})
            for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_attention", description=__doc__.splitlines()[0],
                                epilog="Exit status: 0 measured; 2 arguments it does not accept.")
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--pack-len", type=int, default=1024)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=None)
    p.add_argument("--vocab", type=int, default=32001)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["dense", "documents", "causal"])
    ns = p.parse_args(argv)

    from model.args import ModelArgs
    from model.attention import Causal, build_attention, document_segments
    from model.llama import Transformer

    torch.manual_seed(0)
    args = ModelArgs(dim=ns.dim, n_layers=ns.n_layers, n_heads=ns.n_heads, n_kv_heads=ns.n_kv_heads,
                     vocab_size=ns.vocab, multiple_of=32, max_seq_len=ns.pack_len)
    model = Transformer(args)
    model.init_weights()
    batches = packed_batches(ns)
    spans = [sum(map(len, document_segments(b.document_ids))) for b in batches]  # padding tail included
    # Backends take turns on the same batch, step by step (order rotating), so a drift in the
    # machine's speed (a shared host) hits all of them alike.
    times: dict[str, list[float]] = {name: [] for name in ns.backends}
    for i in range(ns.warmup + ns.steps):
        b = batches[i % len(batches)]
        k = i % len(ns.backends)
        for backend in ns.backends[k:] + ns.backends[:k]:
            t0 = time.perf_counter()
            attn = Causal() if backend == "causal" else build_attention(b.document_ids, backend)
            logits = model.logits(b.tokens, b.positions, attn)
            loss = F.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=-100)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= ns.warmup:
                times[backend].append(time.perf_counter() - t0)
    for backend, ts in times.items():
        print(json.dumps({"backend": backend, "step_s_median": round(statistics.median(ts), 4),
                          "rows": ns.rows, "pack_len": ns.pack_len, "spans_per_row":
                          round(sum(spans) / len(spans) / ns.rows, 2), "dim": ns.dim, "n_layers": ns.n_layers,
                          "n_heads": ns.n_heads, "n_kv_heads": args.n_kv_heads,
                          "threads": torch.get_num_threads()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
