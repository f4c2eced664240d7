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

It lives in data/ because what it learns from is the data pipeline's own view of a record (the
template's prompt, then the output); `python -m tools.train_tokenizer` is its command line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from data.alpaca import load_records
from data.prompts import format_prompt


def training_sentences(records: list[dict], template: str = "alpaca") -> Iterator[str]:
    """The prompt (through the real template) and the output, as two separate sentences.

    Separate because the data pipeline encodes them separately (prompt with BOS, then output
    with EOS), so the output's first word gets its own word-start piece, exactly as here.
    """
    for record in records:
        yield format_prompt(record, template)
        yield record["output"]


def train_tokenizer(paths: list[str], vocab_size: int, out: str, template: str = "alpaca") -> str:
    """Train and write `out` (a .model file) atomically; returns its path. A file that is missing
    or holds an invalid record raises DataError (one line naming file, record and field) before
    any training starts."""
    records = [r for path in paths for r in load_records(path)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_sentences(records, template),
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
