"""Train a small LLaMA-style sentencepiece tokenizer on Alpaca-format data (data/tokenizer_training.py).

    python -m tools.train_tokenizer --data FILE [FILE ...] --vocab-size 1000 --out tok.model
"""

from __future__ import annotations

import argparse
import sys

import sentencepiece as spm

from data.alpaca import DataError
from data.tokenizer_training import train_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.train_tokenizer", description=__doc__.split("\n\n")[0], epilog="Exit status: 0 written; 2 bad input (a missing or unreadable data file, arguments), one line.")
    parser.add_argument("--data", nargs="+", required=True, help="Alpaca-format JSON or JSONL files")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--out", required=True, help="output .model path")
    parser.add_argument("--template", default="alpaca", help="prompt template name (data/prompts.py)")
    args = parser.parse_args(argv)
    try:
        out = train_tokenizer(args.data, args.vocab_size, args.out, args.template)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # sentencepiece refuses the settings, e.g. a vocabulary larger than the data allows
        print(f"error: cannot train tokenizer on {', '.join(args.data)}: {e}", file=sys.stderr)
        return 2
    sp = spm.SentencePieceProcessor(model_file=out)
    print(f"wrote {out} (vocab {sp.vocab_size()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
