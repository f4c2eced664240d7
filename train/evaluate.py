"""Held-out exact match: does the model answer an unseen instruction exactly, and then stop?

Why exact match: the tiny default's tasks have one short correct answer each, so a greedy
decode either reproduces it and emits EOS, or it does not. Loss alone cannot show that a model
stops: a response that is right and then rambles scores 0 here, because generation only ends
at EOS (or `max_new_tokens`) and the whole decoded response is compared.

Decoding is greedy with the KV cache. Prompts of equal token length are decoded together as one
batch (`model.sampling.generate_batch`): the cache is indexed by one shared position, so equal
lengths need no padding and each row gets exactly the tokens `generate` (the path `tools.chat`
uses) gives it alone; `batch_size=1` uses `generate` itself. The tests hold the two equal.

    python -m train.evaluate --ckpt runs/tiny/final --data runs/tiny/assets/heldout.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from data.alpaca import DataError, encode_prompt, load_records
from model.sampling import generate, generate_batch
from model.tokenizer import Tokenizer, TokenizerError, load_tokenizer


def respond_all(model: torch.nn.Module, tokenizer: Tokenizer, records: list[dict[str, Any]],
                template: str = "alpaca", max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """Greedy responses (decoded, stopped at EOS) to every record, in order.

    Records are grouped by prompt length and decoded `batch_size` at a time; batch_size=1 decodes
    each alone through `model.sampling.generate`.
    """
    prompts = [encode_prompt(tokenizer, r, template) for r in records]
    out: list[list[int]] = [[] for _ in records]
    if batch_size <= 1:
        for i, ids in enumerate(prompts):
            out[i] = generate(model, ids, max_new_tokens, temperature=0.0, eos_id=tokenizer.stop_ids)
    else:
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, ids in enumerate(prompts):
            by_len[len(ids)].append(i)
        for idx in by_len.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start: start + batch_size]
                batch = generate_batch(model, [prompts[i] for i in chunk], max_new_tokens, eos_id=tokenizer.stop_ids)
                for i, ids in zip(chunk, batch, strict=True):
                    out[i] = ids
        model.reset_caches()  # batch-sized buffers: free them; the next user sets up its own
    return [tokenizer.decode(ids) for ids in out]


def evaluate_records(model: torch.nn.Module, tokenizer: Tokenizer, records: list[dict[str, Any]] | str | Path,
                     template: str = "alpaca", max_new_tokens: int = 32, batch_size: int = 16) -> dict[str, Any]:
    """Accuracy plus a per-family breakdown and the misses, for reading what failed.

    A record counts as correct when the decoded response, stripped of surrounding whitespace,
    equals `output` stripped. Records without a `family` key are grouped under "all".
    """
    if isinstance(records, (str, Path)):
        records = load_records(records)
    if not records:
        raise ValueError("no records to evaluate")
    was_training = model.training
    model.eval()
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # family -> [correct, total]
    misses = []
    responses = respond_all(model, tokenizer, records, template, max_new_tokens, batch_size)
    for record, response in zip(records, responses, strict=True):
        got = response.strip()
        ok = got == record["output"].strip()
        tally = per_family[record.get("family", "all")]
        tally[0] += ok
        tally[1] += 1
        if not ok:
            misses.append({"instruction": record["instruction"], "input": record.get("input", ""),
                           "expected": record["output"], "got": got})
    model.train(was_training)
    correct = sum(c for c, _ in per_family.values())
    return {
        "accuracy": correct / len(records),
        "n": len(records),
        "per_family": {k: round(c / n, 4) for k, (c, n) in sorted(per_family.items())},
        "misses": misses,
    }


def exact_match(model: torch.nn.Module, tokenizer: Tokenizer, records: list[dict[str, Any]] | str | Path,
                template: str = "alpaca", max_new_tokens: int = 32, batch_size: int = 16) -> float:
    """Fraction of records whose greedy response (to EOS) equals `output` exactly."""
    return evaluate_records(model, tokenizer, records, template, max_new_tokens, batch_size)["accuracy"]


def _fits(n_bytes: float, device: torch.device, local_world: int) -> tuple[bool, str]:
    """Room for one full model copy per rank (plus 10% for the KV cache and buffers)?"""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return n_bytes * 1.1 <= free, f"{free / 1e9:.1f} GB free on {device}"
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return True, ""
    line = next((x for x in meminfo.read_text().splitlines() if x.startswith("MemAvailable:")), None)
    if line is None:
        return True, ""
    free = int(line.split()[1]) * 1024
    return n_bytes * 1.1 * local_world <= free, f"{free / 1e9:.1f} GB available on the host for {local_world} rank(s)"


def evaluate_on_ranks(ckpt: Path, tokenizer: Tokenizer, records: list[dict[str, Any]], template: str,
                      max_new_tokens: int, dtype: torch.dtype, info, out_path: Path, say) -> float | None:
    """Exact match of the exported checkpoint at the end of training, on the training devices.

    Every rank loads the exported model on its own device in `dtype` and decodes its share of
    the prompts (records[rank::world]) with the KV cache; the counts are summed over ranks. No
    rank runs a long job while the others wait in a barrier. When one model copy per rank does
    not fit, the evaluation is skipped with one line saying how to run it afterwards.
    """
    from model.checkpoint import load_args, load_model
    from train.distributed import all_reduce_sum

    need = load_args(ckpt).num_params() * torch.finfo(dtype).bits / 8
    ok, room = _fits(need, info.device, info.local_world_size)
    if not all_reduce_sum([0.0 if ok else 1.0], info.device)[0] == 0:
        say(f"exact match skipped: a {need / 1e9:.1f} GB model copy per rank does not fit ({room}); run "
            f"python -m train.evaluate --ckpt {ckpt} --data <heldout> --device cuda --dtype bf16")
        return None
    mine = records[info.rank::info.world_size]
    correct = 0.0
    if mine:
        model = load_model(ckpt, device=info.device, dtype=dtype)
        result = evaluate_records(model, tokenizer, mine, template, max_new_tokens)
        correct = round(result["accuracy"] * result["n"])
        del model
    total_correct, n = all_reduce_sum([correct, float(len(mine))], info.device)
    acc = total_correct / max(n, 1.0)
    if info.is_main:
        print(format_result(acc, int(n)), flush=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps({"exact_match": acc, "n": int(n)}) + "\n")
        os.replace(tmp, out_path)
    return acc


def format_result(accuracy: float, n: int) -> str:
    """The one line `make train` ends with (the train loop prints it; kept here so it is one string)."""
    return f"exact-match accuracy on {n} held-out prompts: {accuracy:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate",
                                     description="Greedy exact-match accuracy of a checkpoint on Alpaca records.",
                                     epilog="Exit status: 0 evaluated; 2 bad input (checkpoint, data, tokenizer, "
                                            "arguments), one line on stderr.")
    parser.add_argument("--ckpt", required=True, help="project checkpoint directory (config.json, safetensors)")
    parser.add_argument("--data", required=True, help="Alpaca-format JSON/JSONL with the expected outputs")
    parser.add_argument("--tokenizer", help="tokenizer.model (default: the one inside --ckpt)")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (1: one at a time)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to decode (default: cuda when available)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="model dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--show-misses", type=int, default=5, help="print up to N wrong answers")
    args = parser.parse_args(argv)

    from model.checkpoint import load_model

    tok_path = Path(args.tokenizer) if args.tokenizer else Path(args.ckpt) / "tokenizer.model"
    for path, what in ((Path(args.ckpt), "checkpoint"), (Path(args.data), "data file"), (tok_path, "tokenizer")):
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    try:
        records = load_records(args.data)
    except DataError as e:  # one line naming the file, the record and the field
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = records[: args.limit] if args.limit else records
    try:
        tokenizer = load_tokenizer(tok_path)
    except TokenizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    dtype = dtypes[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    model = load_model(args.ckpt, device=device, dtype=dtype)
    result = evaluate_records(model, tokenizer, records, args.template, args.max_new_tokens,
                              args.batch_size)
    for miss in result["misses"][: args.show_misses]:
        print(f"miss: {miss['instruction']!r} {miss['input']!r} -> {miss['got']!r} (want {miss['expected']!r})")
    print(json.dumps({"per_family": result["per_family"]}, ensure_ascii=False))
    print(format_result(result["accuracy"], result["n"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
