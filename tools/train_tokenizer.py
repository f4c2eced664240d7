"""Train a small LLaMA-style sentencepiece tokenizer on Alpaca-format data.

Why: `make train` must run with no download, so the tiny default cannot use LLaMA's 32K
tokenizer; a ~1000-piece BPE model trained here on the synthetic tasks keeps the embedding table
small and sequences short. It copies LLaMA's conventions so every other part of the project
treats it like the real one: unk=0, bos=1, eos=2, no pad id (pad_id -1), BPE, identity
normalisation (newlines and spaces survive), byte fallback (any text, Korean included, encodes
and decodes losslessly), and digits split into single-digit pieces (so "17" is "1" "7" and
arithmetic answers are spelled digit by digit, as in LLaMA).

One departure, on purpose: pieces may span whitespace (`split_by_whitespace=False`, pieces up
to 256 characters). Every training prompt repeats the template's fixed text (the "Below is an
instruction..." preamble and the "### Instruction:" / "### Input:" / "### Response:" headers), so
BPE's most frequent merges turn that boilerplate into a handful of ordinary pieces: the ~30 tokens
of it in every example become 2-3, which cuts the tiny default's sequence length (and CPU time)
about 3x. They are ordinary BPE pieces, not `user_defined_symbols`: other implementations
(transformers' LlamaTokenizer, llama.cpp) match user-defined pieces on the raw text and do not
reproduce sentencepiece's split when they hold spaces or newlines, while plain pieces come out of
the same score-ordered merges everywhere (tests/test_tokenizer_export.py checks transformers).

    python -m tools.train_tokenizer --data FILE [FILE ...] --vocab-size 1000 --out tok.model
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm


def read_records(path: str | Path) -> list[dict]:
    """Alpaca-format records from a JSON list or JSONL file."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_sentences(paths: list[str], template: str = "alpaca") -> Iterator[str]:
    """The prompt (through the real template) and the output, as two separate sentences.

    Separate because the data pipeline encodes them separately (prompt with BOS, then output
    with EOS), so the output's first word gets its own word-start piece, exactly as here.
    """
    from data.prompts import format_prompt  # the data helper's templates, the single source

    for path in paths:
        for record in read_records(path):
            yield format_prompt(record, template)
            yield record["output"]


def train_tokenizer(paths: list[str], vocab_size: int, out: str, template: str = "alpaca") -> str:
    """Train and write `out` (a .model file) atomically; returns its path."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_sentences(paths, template),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,  # every Hangul syllable seen in training gets its own piece
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        split_by_whitespace=False,  # lets the template's boilerplate merge into a few pieces
        split_by_unicode_script=False,  # "?\n\n###" mixes scripts; it should merge too
        max_sentencepiece_length=256,  # the longest fixed text (the with-input preamble) is ~180 chars
        max_sentence_length=8192,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # the tiny default runs on 2 shared cores; one thread is fast enough
        minloglevel=2,  # training chatter on stderr would bury the loop's log
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(out_path)
    return str(out_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train_tokenizer", description=__doc__.split("\n\n")[0], epilog="Exit status: 0 written; 2 bad input (a missing or unreadable data file, arguments), one line.")
    parser.add_argument("--data", nargs="+", required=True, help="Alpaca-format JSON or JSONL files")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--out", required=True, help="output .model path")
    parser.add_argument("--template", default="alpaca", help="prompt template name (data/prompts.py)")
    args = parser.parse_args(argv)
    for path in args.data:
        if not Path(path).is_file():
            print(f"error: data file not found: {path}", file=sys.stderr)
            return 2
    try:
        out = train_tokenizer(args.data, args.vocab_size, args.out, args.template)
    except (json.JSONDecodeError, KeyError, RuntimeError) as e:
        print(f"error: cannot train tokenizer on {', '.join(args.data)}: {e}", file=sys.stderr)
        return 2
    sp = spm.SentencePieceProcessor(model_file=out)
    print(f"wrote {out} (vocab {sp.vocab_size()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
