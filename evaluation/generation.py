"""`python -m tools.eval generate`: a checkpoint's responses to Alpaca or IFEval prompts, as JSONL.

    python -m tools.eval generate --ckpt runs/tiny/final --data heldout.json --out responses.jsonl
    python -m tools.eval generate --ckpt CKPT --data ifeval_input_data.jsonl --out ifeval_responses.jsonl

Each output line is {"prompt", "response"} plus the input record's own fields (Alpaca: instruction,
input, ...; IFEval: key, instruction_id_list, kwargs) and `index` (the record's place in the input),
`new_tokens` and `stopped` ("eos", "length", or "prompt_too_long" for a prompt that fills the
model's context: its response is empty). For IFEval `prompt` is the record's own prompt, so the
file scores as it is; for Alpaca it is the templated prompt the model continued.

Prompts are bucketed by length and decoded in batches (evaluation/batching.py). Resumable: each
finished batch is appended to OUT.partial.jsonl and flushed; after a kill, the same command skips
the prompts already there. When all are done OUT is written at once (atomically), in the input's
order, and the journal removed. The journal's first line records the settings that decide the
responses (data, checkpoint, template, sampling); a rerun with other settings is refused.

The template is --template, else the training run's `data.template` (CKPT/../config.yaml), else
llama3_chat for a Llama 3 tokenizer, else alpaca. Decoding is greedy at --temperature 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from data.prompts import get_template
from evaluation.batching import (
    GenerationError,
    decode_batches,
    encode_all,
    generate_responses,
    load_prompt_records,
    prompt_text,
)
from evaluation.loading import LoadError, check_device, load_for_inference, trained_template
from model.manifest import sha256_file
from model.tokenizer import Tokenizer

__all__ = ["generate_responses", "main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_template(ckpt: Path, tokenizer: Tokenizer) -> str:
    """The training run's template (as tools.chat reads it), else llama3_chat when the tokenizer is
    Llama 3's, else alpaca."""
    return trained_template(ckpt) or ("llama3_chat" if "<|eot_id|>" in tokenizer.special_ids else "alpaca")


class Journal:
    """OUT.partial.jsonl: a settings line, then one finished output line per prompt, flushed per batch."""

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.path = out.with_name(out.name + ".partial.jsonl")
        self.settings = settings

    def load(self, n_records: int) -> dict[int, dict[str, Any]]:
        """The finished lines of an earlier run (index -> line), after checking its settings; a
        line cut short by a kill is dropped from the file. Starts a new journal if there is none."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"settings": self.settings}, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)  # the journal always starts with its settings line
            return {}
        raw = self.path.read_bytes()
        whole = raw[: raw.rfind(b"\n") + 1]  # a kill mid-write leaves at most the last line partial
        if len(whole) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
        lines = whole.decode("utf-8").splitlines()
        try:
            head = json.loads(lines[0])["settings"] if lines else None
        except (ValueError, KeyError, TypeError):
            head = None
        if head != self.settings:
            differs = "no settings line" if not isinstance(head, dict) else ", ".join(
                k for k in self.settings if head.get(k) != self.settings[k])
            raise GenerationError(f"{self.path}: journal of a run with other settings ({differs}); "
                                  "rerun with those settings or delete it to start over")
        done = {}
        for n, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                index = rec["index"]
            except (ValueError, KeyError, TypeError):
                raise GenerationError(f"{self.path}: line {n}: not a finished output line; "
                                      "delete the journal to start over") from None
            if not isinstance(index, int) or not 0 <= index < n_records:
                raise GenerationError(f"{self.path}: line {n}: field 'index': {index!r} is not a record "
                                      f"of the data file ({n_records} records)")
            done[index] = rec
        return done

    def append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def output_line(record: dict[str, Any], index: int, response: str, new_tokens: int, stopped: str,
                template) -> dict[str, Any]:
    """{"prompt", "response"}, then the record's own fields, then what the run adds."""
    own = {k: v for k, v in record.items() if k not in ("prompt", "response", "index", "new_tokens", "stopped")}
    return {"prompt": prompt_text(record, template), "response": response, **own, "index": index,
            "new_tokens": new_tokens, "stopped": stopped}


def write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.eval generate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] + "\nExit status: 0 all responses written; 2 bad input (arguments, "
        "data file, checkpoint, tokenizer, template, a journal of other settings), one line on stderr; "
        "130 interrupted (rerun the same command to resume).")
    p.add_argument("--ckpt", type=Path, required=True, help="project checkpoint directory")
    p.add_argument("--data", type=Path, required=True, help="Alpaca JSON/JSONL or IFEval JSONL")
    p.add_argument("--out", type=Path, required=True, help="responses JSONL to write")
    p.add_argument("--tokenizer", type=Path, help="default: CKPT/tokenizer.model")
    p.add_argument("--template", help="a template name or .json file (default: see above)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (each batch derives its own)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    return p


def run(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    if a.batch_size < 1 or a.max_new_tokens < 1 or a.temperature < 0 or not 0 < a.top_p <= 1:
        raise GenerationError("need --batch-size >= 1, --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1")
    records = load_prompt_records(a.data)
    device = check_device(a.device)
    dtype = DTYPES[a.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if a.tokenizer is not None and not a.tokenizer.is_file():
        raise GenerationError(f"{a.tokenizer}: tokenizer not found")
    model, tokenizer = load_for_inference(a.ckpt, a.tokenizer, device, dtype)
    template = a.template or default_template(a.ckpt, tokenizer)
    try:
        get_template(template)
    except (ValueError, TypeError) as e:
        raise GenerationError(f"--template: {e}") from None
    prompts = encode_all(tokenizer, records, template)
    settings = {"data": str(a.data.resolve()), "data_sha256": sha256_file(a.data), "ckpt": str(a.ckpt.resolve()),
                "template": str(template),
                "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "top_p": a.top_p, "seed": a.seed}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(a.out, settings)
    done = journal.load(len(records))
    bar = tqdm(total=len(records), initial=len(done), unit="prompt", file=sys.stderr, dynamic_ncols=True,
               desc="generate")
    try:
        for finished in decode_batches(model, tokenizer, prompts, template, a.max_new_tokens, a.batch_size,
                                       a.temperature, a.top_p, a.seed, skip=done.__contains__):
            rows = [output_line(records[f.index], f.index, tokenizer.decode(f.ids), len(f.ids), f.stopped,
                                template) for f in finished]
            journal.append(rows)
            done.update((r["index"], r) for r in rows)
            bar.update(len(rows))
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: {len(done)} of {len(records)} responses kept in {journal.path}; rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    bar.close()
    write_atomically(a.out, [done[i] for i in range(len(records))])
    journal.remove()
    counts = {s: sum(r["stopped"] == s for r in done.values()) for s in ("eos", "length", "prompt_too_long")}
    print(f"wrote {len(records)} responses to {a.out} (stopped: {counts['eos']} eos, {counts['length']} length"
          + (f", {counts['prompt_too_long']} prompts too long for the model, empty" if counts["prompt_too_long"]
             else "") + ")", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return run(a)
    except LoadError as e:  # GenerationError included
        print(f"error: {e}", file=sys.stderr)
        return 2
