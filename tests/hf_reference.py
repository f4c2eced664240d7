"""The independent oracle for the model/convert/chat tests: transformers' LlamaForCausalLM.

Helpers (not tests): random tiny HF LLaMAs, the same weights written in Meta's model-parallel
layout (the q/k row order and shard dims written out here, independently of tools/convert*.py),
a small sentencepiece tokenizer trained on the spot, and a subprocess runner for the CLIs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "llama2_tokenizer.model"


def hf_config(**overrides) -> LlamaConfig:
    """A 2-layer LLaMA small enough for CPU tests; overrides pick MHA/GQA, rope scaling, tying."""
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(**{**base, **overrides})


@torch.no_grad()
def random_hf_llama(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """HF model with every weight random: N(0, 0.1) matrices give O(1) logits (a 1e-4 bound then
    means something), norms 1 + N(0, 0.1) so a swapped or dropped norm changes the output."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        else:
            p.normal_(0.0, 0.1)
    return model


def hf_rows_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF q/k rows (per head: the first halves of all pairs, then the second halves) -> Meta's
    interleaved pairs. Written as an explicit row order, not the converter's view/transpose."""
    hd = w.shape[0] // n_heads
    order = [h * hd + j * (hd // 2) + i for h in range(n_heads) for i in range(hd // 2) for j in range(2)]
    return w[order]


def meta_state_dict(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The HF model's weights under Meta's names and q/k row order (unsharded)."""
    c = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attention.wq.weight"] = hf_rows_to_meta(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads)
        out[f"layers.{i}.attention.wk.weight"] = hf_rows_to_meta(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads)
        out[f"layers.{i}.attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        out[f"layers.{i}.attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[f"layers.{i}.feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[f"layers.{i}.feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[f"layers.{i}.attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[f"layers.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def split_model_parallel(state: dict[str, torch.Tensor], n: int, vocab_parallel: bool,
                         head_dim: int) -> list[dict[str, torch.Tensor]]:
    """Cut a Meta state dict the way Meta's model-parallel ranks hold it: column-parallel layers
    (wq, wk, wv, w1, w3, output) by rows, row-parallel (wo, w2) by columns, the embedding by
    columns (LLaMA 1/2) or by vocabulary rows (Llama 3), norms and rope.freqs replicated."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for name, t in state.items():
        if name == "tok_embeddings.weight":
            dim = 0 if vocab_parallel else 1
        elif name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")) or name == "output.weight":
            dim = 0
        elif name.endswith(("wo.weight", "w2.weight")):
            dim = 1
        else:
            dim = None
        parts = [t] * n if dim is None else list(t.chunk(n, dim=dim))
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part.clone()
    for shard in shards:  # Meta's files carry the precomputed RoPE table; converters drop it
        shard["rope.freqs"] = torch.randn(head_dim // 2)
    return shards


def write_meta_checkpoint(directory: Path, shards: list[dict[str, torch.Tensor]], params: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(shards):
        torch.save(shard, directory / f"consolidated.{i:02d}.pth")
    (directory / "params.json").write_text(json.dumps(params))
    return directory


def train_sentencepiece(path: Path, vocab_size: int = 400) -> Path:
    """A small LLaMA-style BPE tokenizer (unk=0, bos=1, eos=2, no pad, byte fallback), so the chat
    and tokenizer-mismatch tests run without any downloaded file."""
    words = ("the a an of to in is was for on with as by at from model token train data text "
             "alpaca llama answer question write list name three colours quick brown fox jumps "
             "over lazy dog 안녕하세요 세계 모델 데이터").split()
    g = torch.Generator().manual_seed(0)
    sentences = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (12,), generator=g))
                 for _ in range(2000)]
    prefix = str(path.with_suffix(""))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        num_threads=1, minloglevel=2,
    )
    return Path(prefix + ".model")


def run_module(*argv: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m ...` from the repository root, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True,
                          input=None if stdin is None else stdin.encode(), timeout=timeout)
    # decoded by hand: text=True would turn a generated "\r" into "\n" (universal newlines)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
