"""Benchmark: the ROUGE-L dedup of generate/dedup.py against original Alpaca's approach.

Alpaca's `generate_instruction.py` checks each candidate by starting a new
`multiprocessing.Pool` and mapping rouge-score's `_score_lcs` over the token lists of the
whole pool (tokenized once up front), then keeps the candidate if the maximum F is <= 0.7. The
baseline here is that loop, verbatim in behaviour (same tokenizer for both sides, same LCS
function). The fast side is `RougeDedup` with its persistent pool, metadata included (exact
top-10 most similar and the sampled average), so it does at least the work the pipeline does.

Both sides see the same pool and the same candidates, in order; accepted candidates join the
pool, as in a real run. The benchmark fails (exit 1) unless every accept/reject decision and
the best score of every accepted candidate agree.

Pool: the real instructions from ../shared/data (self-instruct seeds, GSM8K, GPTeacher), topped
up to the requested size with synthetic instructions drawn from the same words and lengths.
Candidates: half near-copies of pool members (a few words changed: mostly rejected), half new
synthetic instructions (mostly accepted).

    python -m generate.bench_dedup --sizes 1000,5000,20000,52000 --candidates 20
    python -m tools.bench dedup --sizes 52000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer

from generate.dedup import RougeDedup
from generate.rouge import tokenize

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_instructions(data_dir: Path) -> list[str]:
    """Instructions from the read-only shared data, de-duplicated, in file order."""
    texts: list[str] = []
    seeds = data_dir / "seed_tasks.jsonl"
    if seeds.exists():
        texts += [json.loads(line)["instruction"] for line in seeds.read_text().splitlines() if line.strip()]
    for name in ("gsm8k_alpaca.json", "gpteacher_toolformer_alpaca.json", "gpteacher_roleplay_alpaca.json"):
        path = data_dir / name
        if path.exists():
            texts += [r["instruction"] for r in json.loads(path.read_text())]
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def make_workload(size: int, n_candidates: int, data_dir: Path, seed: int = 0) -> tuple[list[str], list[str], int]:
    """(pool, candidates, number of real instructions in the pool)."""
    rng = random.Random(seed)
    real = real_instructions(data_dir)
    rng.shuffle(real)
    words = [w for t in real[:5000] for w in t.split()] or "explain the idea of a simple task".split()
    lengths = [len(t.split()) for t in real[:5000]] or [12]

    def synthetic() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.choice(lengths)))

    pool = real[:size]
    n_real = len(pool)
    pool += [synthetic() for _ in range(size - n_real)]
    candidates = []
    for k in range(n_candidates):
        if k % 2 == 0:
            toks = rng.choice(pool).split()
            for _ in range(rng.randint(1, 3)):
                toks[rng.randrange(len(toks))] = rng.choice(words)
            candidates.append(" ".join(toks))
        else:
            candidates.append(synthetic())
    return pool, candidates, n_real


def run_baseline(pool: list[str], candidates: list[str], threshold: float, procs: int) -> tuple[list, float]:
    """Alpaca's loop: a fresh Pool per candidate, `_score_lcs` against every pool member."""
    all_texts = list(pool)
    all_tokens = [tokenize(t) for t in pool]
    results = []
    start = time.perf_counter()
    for cand in candidates:
        new_tokens = tokenize(cand)
        with multiprocessing.Pool(procs) as p:
            scores = p.map(partial(rouge_scorer._score_lcs, new_tokens), all_tokens)
        scores = [s.fmeasure for s in scores]
        # Alpaca also builds its metadata from these scores (top 10, mean); cheap next to the map.
        _ = [all_texts[i] for i in np.argsort(scores)[-10:][::-1]], float(np.mean(scores))
        best = max(scores)
        accepted = best <= threshold
        results.append((accepted, round(best, 12) if accepted else None))
        if accepted:
            all_texts.append(cand)
            all_tokens.append(new_tokens)
    return results, time.perf_counter() - start


def run_fast(pool: list[str], candidates: list[str], threshold: float, workers: int) -> tuple[list, float, float]:
    t0 = time.perf_counter()
    dedup = RougeDedup(threshold=threshold, workers=workers)
    for text in pool:
        dedup.add(text)
    build = time.perf_counter() - t0
    results = []
    start = time.perf_counter()
    for cand in candidates:
        d = dedup.check(cand)
        results.append((d.accepted, round(d.score, 12) if d.accepted else None))
        if d.accepted:
            dedup.add(cand, d.tokens)
    elapsed = time.perf_counter() - start
    dedup.close()
    return results, elapsed, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generate.bench_dedup", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 every decision agreed; 1 the baseline and the fast path "
                                            "decided differently; 2 bad arguments.")
    parser.add_argument("--sizes", default="1000,5000,20000,52000", help="pool sizes, comma-separated")
    parser.add_argument("--candidates", type=int, default=20, help="candidates checked per size")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes on both sides")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--skip-baseline-above", type=int, default=None,
                        help="time only the fast side for larger pools (the baseline is then missing)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        print(f"error: --sizes must be comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"procs={args.procs}, candidates={args.candidates}, threshold={args.threshold}")
    print("pool_size  real  baseline_s/cand  fast_ms/cand  speedup  identical  kept  fast_index_build_s")
    rows, ok = [], True
    for size in sizes:
        pool, cands, n_real = make_workload(size, args.candidates, args.data_dir)
        fast, fast_s, build_s = run_fast(pool, cands, args.threshold, args.procs)
        row = {"pool_size": size, "real_in_pool": n_real, "candidates": len(cands),
               "fast_s_per_candidate": fast_s / len(cands), "fast_index_build_s": build_s,
               "kept": sum(a for a, _ in fast)}
        if args.skip_baseline_above is None or size <= args.skip_baseline_above:
            base, base_s = run_baseline(pool, cands, args.threshold, args.procs)
            same = base == fast
            ok &= same
            row.update(baseline_s_per_candidate=base_s / len(cands), speedup=base_s / fast_s, identical=same)
        rows.append(row)
        base_txt = (f"{row['baseline_s_per_candidate']:15.3f}  " if "speedup" in row else f"{'-':>15}  ")
        speed_txt = f"{row['speedup']:7.1f}x  {str(row['identical']):>9}" if "speedup" in row else f"{'-':>8}  {'-':>9}"
        print(f"{size:9d}  {n_real:5d}  {base_txt}{row['fast_s_per_candidate'] * 1e3:12.2f}  {speed_txt}  "
              f"{row['kept']:4d}  {build_s:18.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                        "rows": rows}, indent=2) + "\n")
    if not ok:
        print("error: decisions differ between the baseline and the fast path", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
