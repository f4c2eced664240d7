"""Responses of a model to many prompts: prompt records, bucketing by length, batched decoding.

The library half of `python -m tools.eval generate` (evaluation/generation.py adds the journal and
the command line); `make eval` and other callers use `generate_responses` directly.

Bucketing: prompts are sorted by token length (longest first, so a batch that does not fit in
memory fails at once, not at the end) and cut into batches of `batch_size`. Neighbours in that
order differ by a few tokens, so the left padding `model.sampling.generate_batch` adds stays small.
The plan depends only on the prompt lengths and the batch size, so a resumed run decodes the same
batches an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.alpaca import DataError, encode_prompt, parse_records, response_end_ids
from data.prompts import format_prompt
from evaluation.loading import LoadError
from model.llama import Transformer
from model.sampling import generate_batch
from model.tokenizer import Tokenizer


class GenerationError(LoadError):
    """A problem the user can fix (a bad data file, checkpoint or setting), as one printable line."""


@dataclass
class Finished:
    """One prompt's outcome: its new token ids and why they ended."""

    index: int
    ids: list[int]
    stopped: str  # "eos" (a stop id), "length" (max_new_tokens or max_seq_len), "prompt_too_long"


def _type_name(v: Any) -> str:
    return "null" if v is None else {dict: "object", list: "list", str: "string"}.get(type(v), type(v).__name__)


def check_prompt_record(rec: Any) -> str | None:
    """What is wrong with one record ("field 'instruction': missing ..."), or None if usable.

    Alpaca records need a non-empty string `instruction` (`input` optional); IFEval records have
    no `instruction` but a non-empty string `prompt`. Any other fields are carried along."""
    if not isinstance(rec, dict):
        return f"expected an object with 'instruction' (Alpaca) or 'prompt' (IFEval), got {_type_name(rec)}"
    field = "instruction" if "instruction" in rec or "prompt" not in rec else "prompt"
    if field not in rec:
        return "field 'instruction': missing (an Alpaca record needs 'instruction', an IFEval record 'prompt')"
    if not isinstance(rec[field], str):
        return f"field '{field}': expected a string, got {_type_name(rec[field])}"
    if not rec[field].strip():
        return f"field '{field}': empty"
    if field == "instruction" and "input" in rec and not isinstance(rec["input"], str | None):
        return f"field 'input': expected a string, got {_type_name(rec['input'])}"
    return None


def load_prompt_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of an Alpaca JSON/JSONL or IFEval JSONL file; the first bad one raises a
    GenerationError naming the file, the record and the field."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GenerationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenerationError(f"{path}: cannot read: {e}") from None
    try:
        labelled = parse_records(text, path)
    except DataError as e:
        raise GenerationError(str(e)) from None
    for label, rec in labelled:
        problem = check_prompt_record(rec)
        if problem:
            raise GenerationError(f"{path}: {label}: {problem}")
    if not labelled:
        raise GenerationError(f"{path}: no records")
    return [rec for _, rec in labelled]


def as_instruction(rec: Mapping[str, Any]) -> dict[str, str]:
    """The {instruction, input} the template formats: IFEval's prompt is the instruction, no input."""
    if "instruction" in rec:
        return {"instruction": rec["instruction"], "input": rec.get("input") or ""}
    return {"instruction": rec["prompt"], "input": ""}


def prompt_text(rec: Mapping[str, Any], template) -> str:
    """The `prompt` field of an output line: IFEval's own prompt (so the file scores as is), else
    the templated text the model continued."""
    return rec["prompt"] if "instruction" not in rec else format_prompt(as_instruction(rec), template)


def plan_batches(lengths: list[int], batch_size: int, max_seq_len: int) -> list[list[int]]:
    """Indices of the prompts that fit (shorter than max_seq_len), longest first, in batches."""
    fits = sorted((i for i, n in enumerate(lengths) if n < max_seq_len), key=lambda i: (-lengths[i], i))
    return [fits[s: s + batch_size] for s in range(0, len(fits), batch_size)]


def encode_all(tokenizer: Tokenizer, records: list[Mapping[str, Any]], template) -> list[list[int]]:
    """Each record's prompt ids, exactly as training builds the prefix of a response."""
    try:
        return [encode_prompt(tokenizer, as_instruction(r), template) for r in records]
    except DataError as e:  # a chat template with a tokenizer that lacks its control tokens
        raise GenerationError(str(e)) from None


def decode_batches(model: Transformer, tokenizer: Tokenizer, prompts: list[list[int]], template,
                   max_new_tokens: int, batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0, skip: Callable[[int], bool] = lambda i: False
                   ) -> Iterator[list[Finished]]:
    """One list of Finished per batch of the plan, in plan order; prompts with skip(i) true (done
    in an earlier run) are left out, and a batch left empty is not decoded at all.

    Batch k samples with its own generator seeded from (seed, k), so a resumed run draws for a
    batch what an uninterrupted one draws. Stops: the tokenizer's stop ids and the template's end
    of response (Llama 3: <|eot_id|>)."""
    stop = set(tokenizer.stop_ids) | set(response_end_ids(tokenizer, template))
    max_len = model.args.max_seq_len
    device = model.tok_embeddings.weight.device
    too_long = [i for i, p in enumerate(prompts) if len(p) >= max_len and not skip(i)]
    if too_long:
        yield [Finished(i, [], "prompt_too_long") for i in too_long]
    for k, batch in enumerate(plan_batches([len(p) for p in prompts], batch_size, max_len)):
        batch = [i for i in batch if not skip(i)]
        if not batch:
            continue
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
        outs = generate_batch(model, [prompts[i] for i in batch], max_new_tokens, temperature, top_p,
                              eos_id=stop, generator=generator, pad_id=tokenizer.pad_id)
        finished = []
        for i, ids in zip(batch, outs, strict=True):
            limit = min(max_new_tokens, max_len - len(prompts[i]))
            finished.append(Finished(i, ids, "eos" if len(ids) < limit else "length"))
        yield finished
    model.reset_caches()  # batch-sized buffers: free them; the next user sets up its own


def generate_responses(model: Transformer, tokenizer: Tokenizer, records: list[Mapping[str, Any]],
                       template="alpaca", max_new_tokens: int = 256, batch_size: int = 16,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """The decoded response to each record (Alpaca or IFEval fields), in the records' order;
    a prompt as long as the model's max_seq_len gets "". Raises GenerationError for a template
    the tokenizer cannot write."""
    prompts = encode_all(tokenizer, records, template)
    out = [""] * len(records)
    was_training = model.training
    model.eval()
    for finished in decode_batches(model, tokenizer, prompts, template, max_new_tokens, batch_size,
                                   temperature, top_p, seed):
        for f in finished:
            out[f.index] = tokenizer.decode(f.ids)
    model.train(was_training)
    return out
