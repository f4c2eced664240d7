"""Talk to a project checkpoint with the prompt template it was trained with.

    python -m tools.chat --ckpt DIR --instruction "Name three colours." [--input TEXT]
    python -m tools.chat --ckpt DIR            # interactive, on a terminal
    python -m tools.chat --ckpt DIR < questions.txt > answers.txt   # one instruction per line

Interactive (standard input is a terminal): each turn asks "Instruction:", then "Input
(optional):", the context that --input gives in one-shot mode (Enter for none); an empty
instruction or Ctrl-D exits. The prompts go to stderr, the responses to stdout.

Piped (standard input is not a terminal): every line is one instruction, with no input field, and
stdout gets exactly one line per input line, in order. So that an answer stays on its line, a
newline inside it is written as the two characters \\n (a carriage return as \\r); an empty input
line, or an instruction that fails (too long for the model), gets an empty answer line, the latter
with its error on stderr.

The prompt is built exactly as training builds it (data/alpaca.encode_prompt), so a fine-tuned
model sees at inference the token sequence it was trained to continue. The template is --template
if given, else the `data.template` of the training run that exported DIR (`DIR/../config.yaml`,
written by `python -m train` beside `final/`), else "alpaca". Decoding is greedy at
--temperature 0, otherwise temperature + top-p sampling; it stops at any of the tokenizer's stop
ids (EOS; Llama 3 also <|eot_id|> and <|eom_id|>) or --max-new-tokens. The response streams to
stdout as it is generated; with --instruction nothing else goes to stdout.

Exit status: 0 ok; 2 bad input (arguments, --ckpt, --tokenizer, --device, a prompt longer than the
model's context in one-shot mode), one line on stderr; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from data.alpaca import DataError, encode_prompt
from data.prompts import TEMPLATES
from evaluation.loading import LoadError, check_device, load_for_inference, trained_template
from model.llama import Transformer
from model.sampling import generate
from model.tokenizer import Tokenizer


class ChatError(LoadError):
    """A problem the user can fix (a prompt too long for the model); reported as one line."""


class Streamer:
    """Prints the response as tokens arrive.

    Decoding token by token would drop sentencepiece's word-boundary spaces and split multi-byte
    characters (byte-fallback pieces), so it decodes the whole response so far and prints the new
    suffix, holding back a trailing U+FFFD until the rest of the character's bytes arrive.
    """

    def __init__(self, tokenizer: Tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout  # looked up now: tests swap sys.stdout
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        self._emit(self.tokenizer.decode(self.ids).rstrip("\ufffd"))

    def finish(self) -> None:
        self._emit(self.tokenizer.decode(self.ids))

    def _emit(self, text: str) -> None:
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text


class OneLine:
    """Wraps stdout for piped mode: an answer's own line breaks are escaped so it stays one line."""

    def __init__(self, out):
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text.replace("\r", "\\r").replace("\n", "\\n"))

    def flush(self) -> None:
        self.out.flush()


def respond(model: Transformer, tokenizer: Tokenizer, instruction: str, input_text: str = "",
            template: str = "alpaca", max_new_tokens: int = 256, temperature: float = 0.0,
            top_p: float = 1.0, generator: torch.Generator | None = None, out=None) -> list[int]:
    """Generate (and stream to `out`) the response to one instruction; returns the new token ids."""
    try:
        prompt_ids = encode_prompt(tokenizer, {"instruction": instruction, "input": input_text}, template)
    except DataError as e:  # a chat template with a tokenizer that lacks its control tokens
        raise ChatError(str(e)) from None
    room = model.args.max_seq_len - len(prompt_ids)
    if room <= 0:
        raise ChatError(f"the prompt is {len(prompt_ids)} tokens; the model's max_seq_len is "
                        f"{model.args.max_seq_len}")
    streamer = Streamer(tokenizer, out)
    ids = generate(model, prompt_ids, min(max_new_tokens, room), temperature=temperature, top_p=top_p,
                   eos_id=tokenizer.stop_ids, on_token=streamer, generator=generator)
    streamer.finish()
    return ids


def _ask(label: str) -> str | None:
    """One line from stdin, the label on stderr so stdout carries only responses; None at EOF."""
    print(label, end="", file=sys.stderr, flush=True)
    try:
        return input()
    except EOFError:
        return None


def answer_lines(model: Transformer, tokenizer: Tokenizer, lines, sample: dict) -> int:
    """Piped mode: one instruction per line in, one answer line out (see the module doc)."""
    out = OneLine(sys.stdout)
    for line in lines:
        instruction = line.rstrip("\r\n")
        if instruction.strip():
            try:
                respond(model, tokenizer, instruction, "", out=out, **sample)
            except ChatError as e:  # one bad line should not cost the answers to the others
                print(f"error: {e}", file=sys.stderr)
        print(flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.chat", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="project checkpoint directory")
    p.add_argument("--tokenizer", type=Path, help="default: CKPT/tokenizer.model")
    p.add_argument("--instruction", help="answer this one instruction and exit")
    p.add_argument("--input", default="", help="optional context for --instruction")
    p.add_argument("--template", choices=sorted(TEMPLATES),
                   help="default: the training run's data.template (CKPT/../config.yaml), else alpaca")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.temperature < 0 or not 0 < a.top_p <= 1 or a.max_new_tokens < 1:
        print("error: need --temperature >= 0, 0 < --top-p <= 1, --max-new-tokens >= 1", file=sys.stderr)
        return 2
    try:
        device = check_device(a.device)
        dtype = getattr(torch, a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
        generator = torch.Generator(device=device).manual_seed(a.seed)
        model, tokenizer = load_for_inference(a.ckpt, a.tokenizer, device, dtype)
        sample = dict(template=a.template or trained_template(a.ckpt) or "alpaca", max_new_tokens=a.max_new_tokens,
                      temperature=a.temperature, top_p=a.top_p, generator=generator)
        if a.instruction is not None:
            respond(model, tokenizer, a.instruction, a.input, **sample)
            print()
            return 0
        if not sys.stdin.isatty():
            return answer_lines(model, tokenizer, sys.stdin, sample)
        print(f"loaded {a.ckpt}; empty instruction or Ctrl-D exits", file=sys.stderr)
        while (instruction := _ask("\nInstruction: ")) and instruction.strip():
            input_text = _ask("Input (optional): ") or ""
            try:
                respond(model, tokenizer, instruction, input_text, **sample)
            except ChatError as e:  # a too-long prompt should not end the session
                print(f"error: {e}", file=sys.stderr)
            print()
    except LoadError as e:  # ChatError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
