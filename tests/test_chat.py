"""tools.chat: the Stanford Alpaca prompt, greedy output identical to transformers' greedy
`generate` on the same weights (run as `python -m tools.chat`, as a user runs it), EOS stops,
top-p, the interactive loop on a terminal, one answer line per piped line, and one-line errors
for a bad --ckpt or --device."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
from hf_reference import REPO, hf_config, random_hf_llama, run_module, train_sentencepiece
from safetensors.torch import load_file, save_file

from tools.chat import main as chat_main
from tools.convert import main as convert

# Stanford Alpaca's PROMPT_DICT, copied from the paper's repository (the oracle for the template).
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
              "context. Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
EOS = 2


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory):
    """A converted checkpoint with a trained 400-piece tokenizer, its HF twin, and the tokenizer."""
    root = tmp_path_factory.mktemp("chat")
    tok = train_sentencepiece(root / "tok.model", vocab_size=400)
    hf = random_hf_llama(hf_config(vocab_size=400, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256), seed=11)
    hf.save_pretrained(root / "hf")
    shutil.copy(tok, root / "hf" / "tokenizer.model")
    assert convert(["hf", str(root / "hf"), str(root / "ckpt")]) == 0
    return root / "ckpt", hf, spm.SentencePieceProcessor(model_file=str(tok))


def _hf_greedy_text(hf, sp, prompt: str, max_new_tokens: int) -> str:
    ids = [sp.bos_id()] + sp.encode(prompt)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                          eos_token_id=EOS, pad_token_id=0)
    new = out[0, len(ids):].tolist()
    return sp.decode(new[:-1] if new and new[-1] == EOS else new)


def _chat(ckpt, *args: str, stdin: str | None = None):
    return run_module("tools.chat", "--ckpt", str(ckpt), *args, stdin=stdin)


def test_one_shot_greedy_output_equals_transformers_greedy_generate(chat_setup):
    ckpt, hf, sp = chat_setup
    instruction, context = "Name three colours of the quick brown fox.", "안녕하세요 the lazy dog"
    proc = _chat(ckpt, "--instruction", instruction, "--input", context, "--temperature", "0",
                 "--max-new-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    expected = _hf_greedy_text(hf, sp, WITH_INPUT.format(instruction=instruction, input=context), 24)
    assert expected.strip()  # a non-empty response is compared
    assert proc.stdout == expected + "\n"  # the response alone: no prompt, no banner

    proc = _chat(ckpt, "--instruction", instruction, "--temperature", "0", "--max-new-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _hf_greedy_text(hf, sp, NO_INPUT.format(instruction=instruction), 24) + "\n"


def _chat_in_process(capsys, ckpt, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = chat_main(["--ckpt", str(ckpt), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tiny_top_p_samples_the_greedy_tokens_and_seeds_reproduce(chat_setup, capsys):
    ckpt, hf, sp = chat_setup
    instruction = "Write a question about data."
    code, out, _ = _chat_in_process(capsys, ckpt, "--instruction", instruction, "--temperature", "1.0",
                                    "--top-p", "1e-6", "--max-new-tokens", "16")
    assert code == 0
    assert out == _hf_greedy_text(hf, sp, NO_INPUT.format(instruction=instruction), 16) + "\n"
    sampled = [_chat_in_process(capsys, ckpt, "--instruction", instruction, "--temperature", "1.0",
                                "--top-p", "1.0", "--seed", str(seed), "--max-new-tokens", "16")[1]
               for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def _chat_on_terminal(ckpt, *args: str, typed: str) -> tuple[int, str, str]:
    """tools.chat with a pseudo-terminal as stdin (what a user at a shell has), `typed` typed ahead."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tools.chat", "--ckpt", str(ckpt), *args], cwd=REPO,
                                env=env, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.write(master, typed.encode())
        out, err = proc.communicate(timeout=180)
    finally:
        os.close(master)
        os.close(slave)
    return proc.returncode, out.decode(), err.decode()


def test_interactive_loop_answers_each_instruction_and_exits_on_empty_line(chat_setup):
    ckpt, hf, sp = chat_setup
    typed = "List three words.\n\nName a model.\nllama\n\n"  # instruction, input, ..., empty = quit
    code, out, err = _chat_on_terminal(ckpt, "--temperature", "0", "--max-new-tokens", "12", typed=typed)
    assert code == 0, err
    first = _hf_greedy_text(hf, sp, NO_INPUT.format(instruction="List three words."), 12)
    second = _hf_greedy_text(hf, sp, WITH_INPUT.format(instruction="Name a model.", input="llama"), 12)
    assert out == f"{first}\n{second}\n"
    assert "Instruction:" in err and "Input (optional):" in err  # prompts on stderr, stdout has answers
    code, out, _ = _chat_on_terminal(ckpt, "--temperature", "0", "--max-new-tokens", "4", typed="\x04")
    assert code == 0 and out == ""  # Ctrl-D at once


def _one_line(text: str) -> str:
    """An answer as piped mode writes it (the documented escapes), computed from the oracle's text."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def test_piped_lines_are_one_instruction_each_and_get_one_answer_line_each(chat_setup):
    ckpt, hf, sp = chat_setup
    questions = ["What is 7 plus 8?", "Give the last word: apple river stone cloud", "", "Name a colour."]
    proc = _chat(ckpt, "--temperature", "0", "--max-new-tokens", "24", stdin="\n".join(questions) + "\n")
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.split("\n")
    assert answers[-1] == "" and len(answers) - 1 == len(questions)  # one line per input line
    for question, answer in zip(questions, answers[:-1], strict=True):
        expected = _hf_greedy_text(hf, sp, NO_INPUT.format(instruction=question), 24) if question else ""
        assert answer == _one_line(expected), question
    assert answers[0] != answers[1]  # the second line was asked, not taken as the first one's input
    assert "Instruction:" not in proc.stderr


def test_piped_answer_with_a_newline_stays_on_one_line(chat_setup, tmp_path):
    """Swap the output rows of the newline byte and the first greedy token of the first answer:
    that answer then starts with "\\n", which must come out as the two characters \\n so the
    second question's answer is still on line two."""
    ckpt, hf, sp = chat_setup
    newline = sp.piece_to_id("<0x0A>")
    assert newline != sp.unk_id() and sp.decode([newline]) == "\n"
    prompt = [sp.bos_id()] + sp.encode(NO_INPUT.format(instruction="First?"))
    with torch.no_grad():
        first = hf.generate(torch.tensor([prompt]), max_new_tokens=1, do_sample=False,
                            pad_token_id=0)[0, -1].item()
    assert first not in (newline, EOS)
    swapped = tmp_path / "ckpt"
    shutil.copytree(ckpt, swapped)
    weights = load_file(swapped / "model.safetensors")
    weights["output.weight"][[newline, first]] = weights["output.weight"][[first, newline]]
    save_file(weights, swapped / "model.safetensors", metadata={"format": "pt"})
    (swapped / "manifest.json").unlink(missing_ok=True)  # edited on purpose: the manifest would refuse it
    proc = _chat(swapped, "--temperature", "0", "--max-new-tokens", "4", stdin="First?\nSecond?\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert len(lines) == 3 and lines[2] == "" and lines[0].startswith("\\n"), proc.stdout


def test_cuda_device_without_cuda_is_one_line_and_exit_2(chat_setup):
    ckpt, _, _ = chat_setup
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    for device in ("cuda", "cuda:1", "nonsense"):
        proc = _chat(ckpt, "--instruction", "hi", "--device", device)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: --device {device}: ")


def test_bad_ckpt_is_one_line_and_exit_2(chat_setup, tmp_path, capsys):
    ckpt, _, _ = chat_setup
    proc = _chat(tmp_path / "nope", "--instruction", "hi")  # the real CLI: no traceback
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "nope" in proc.stderr
    no_config = tmp_path / "empty"
    no_config.mkdir()
    shutil.copy(ckpt / "tokenizer.model", no_config / "tokenizer.model")
    wrong_tok = tmp_path / "wrong_tok"
    shutil.copytree(ckpt, wrong_tok)
    (wrong_tok / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    truncated = tmp_path / "truncated"
    shutil.copytree(ckpt, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    for bad, names in ((no_config, "config.json"), (wrong_tok, "tokenizer.model"),
                       (truncated, "model.safetensors")):
        code, out, err = _chat_in_process(capsys, bad, "--instruction", "hi")
        lines = err.strip().splitlines()
        assert code == 2 and out == ""
        assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines


def test_response_stops_at_eos(chat_setup, tmp_path):
    """Swap the output rows of EOS and the token greedy decoding picks third: the response must end
    after two tokens, exactly where transformers' generate (eos_token_id=2) stops."""
    ckpt, hf, sp = chat_setup
    instruction = "Write a list."
    prompt = [sp.bos_id()] + sp.encode(NO_INPUT.format(instruction=instruction))
    with torch.no_grad():
        free = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                           eos_token_id=EOS, pad_token_id=0)[0, len(prompt):].tolist()
    assert EOS not in free[:2] and free[2] not in free[:2]
    swapped = tmp_path / "ckpt"
    shutil.copytree(ckpt, swapped)
    weights = load_file(swapped / "model.safetensors")
    weights["output.weight"][[EOS, free[2]]] = weights["output.weight"][[free[2], EOS]]
    save_file(weights, swapped / "model.safetensors", metadata={"format": "pt"})
    (swapped / "manifest.json").unlink(missing_ok=True)  # edited on purpose: the manifest would refuse it
    proc = _chat(swapped, "--instruction", instruction, "--temperature", "0", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == sp.decode(free[:2]) + "\n"

