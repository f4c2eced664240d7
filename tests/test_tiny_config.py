"""configs/tiny.yaml keeps the contract `make train` relies on: it parses under the real schema,
builds its data and tokenizer itself (no download), stays a CPU-sized model, and ends with the
held-out exact-match check. The accuracy and wall time themselves are `make train`'s to show
(docs/TINY.md), not a unit test's."""

from pathlib import Path

from model.args import ModelArgs
from train.config import load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_tiny_config_is_self_contained_cpu_sized_and_evaluated():
    cfg = load_config(TINY)
    assert cfg.data.source == "synthetic" and not cfg.data.paths  # nothing to download
    assert cfg.model.init_from is None  # trained from scratch
    assert cfg.eval.exact_match
    assert cfg.parallel.mixed_precision == "fp32"  # CPU: bf16 gains nothing at this size
    assert cfg.checkpoint.every == 0  # no DCP saves inside the 10-minute budget
    args = ModelArgs.preset(cfg.model.preset, **{**cfg.model.args, "vocab_size": 1000}) if cfg.model.preset \
        else ModelArgs(**{**cfg.model.args, "vocab_size": 1000})
    assert args.num_params() <= 5_000_000
    # Every synthetic example (at most ~40 tokens with the tiny tokenizer) fits without truncation.
    assert cfg.data.max_len >= 64 and args.max_seq_len >= cfg.data.max_len
