"""The real Alpaca-format sets (../shared/data, 18K examples) with the LLaMA-2 tokenizer: every
example's unmasked labels are exactly its `output` + EOS (or a prefix of it when cut), and its
masked part is exactly the Stanford prompt. The oracle is sentencepiece itself, called directly
on strings built here from the record, never the pipeline's own arrays."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.alpaca import IGNORE_INDEX
from data.cache import load_tokenized
from data.dataset import AlpacaDataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ["gsm8k_alpaca.json", "gpteacher_toolformer_alpaca.json", "gpteacher_roleplay_alpaca.json"]
TOK = SHARED / "llama2_tokenizer.model"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not TOK.is_file() or not all((SHARED / s).is_file() for s in SETS),
                                reason="shared data absent")

NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
              "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
              "{instruction}\n\n### Input:\n{input}\n\n### Response:")


@pytest.fixture(scope="module")
def sp():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(TOK))


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    from model.tokenizer import load_tokenizer

    cache = tmp_path_factory.mktemp("cache")
    tok = load_tokenizer(TOK)
    return {s: load_tokenized(str(SHARED / s), tok, "alpaca", 512, str(cache), num_proc=2) for s in SETS}


@pytest.mark.parametrize("name", SETS)
def test_every_unmasked_label_sequence_is_the_output_then_eos(name, sp, tokenized):
    records = json.loads((SHARED / name).read_text())
    tf = tokenized[name]
    ds = AlpacaDataset([tf])
    assert len(ds) == len(records) and tf.meta["dropped"] == 0  # no prompt reaches 512 here
    prompts = [(WITH_INPUT if r.get("input") else NO_INPUT).format(instruction=r["instruction"],
                                                                    input=r.get("input", ""))
               for r in records]
    prompt_ids = sp.encode(prompts)
    output_ids = sp.encode([r["output"] for r in records])
    n_cut = 0
    for i in range(len(ds)):
        tokens, labels = ds[i]
        r = int(tf.record_index[i])
        p, o = prompt_ids[r], output_ids[r]
        full = [1] + p + o + [2]
        n_masked = int((labels == IGNORE_INDEX).sum())
        assert n_masked == len(p) and (labels[:n_masked] == IGNORE_INDEX).all(), (name, r)
        assert tokens.tolist() == full[: len(tokens)], (name, r)
        targets = labels[n_masked:].tolist()
        if len(full) <= 512:
            assert len(tokens) == len(full) - 1
            assert targets[-1] == 2 and sp.decode(targets[:-1]) == records[r]["output"], (name, r)
        else:  # cut at 512: 511 tokens, the targets a prefix of output + EOS
            n_cut += 1
            assert len(tokens) == 511 and targets == (o + [2])[: len(targets)], (name, r)
            assert records[r]["output"].startswith(sp.decode(targets).rstrip("\ufffd")), (name, r)
    assert n_cut == tf.meta["truncated"] == int(tf.truncated.sum())


def test_data_stats_counts_tokens_like_an_independent_count(sp):
    name = "gpteacher_roleplay_alpaca.json"
    out = subprocess.run([sys.executable, "-m", "tools.data_stats", "--data", str(SHARED / name),
                          "--tokenizer", str(TOK), "--cache-dir", ""], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    records = json.loads((SHARED / name).read_text())
    total = targets = cut = 0
    for r in records:
        p = sp.encode((WITH_INPUT if r.get("input") else NO_INPUT).format(
            instruction=r["instruction"], input=r.get("input", "")))
        n = 1 + len(p) + len(sp.encode(r["output"])) + 1
        cut += n > 512
        total += min(n, 512) - 1
        targets += min(n, 512) - 1 - len(p)
    assert (stats["examples"], stats["dropped"], stats["truncated"]) == (len(records), 0, cut)
    assert (stats["total_tokens"], stats["target_tokens"]) == (total, targets)
    assert 0 < stats["padding_efficiency"] < 1 and 0 < stats["packing_efficiency"] <= 1
    assert np.isclose(stats["packing_efficiency"], total / (stats["packed_rows"] * 2048), atol=1e-4)
