"""The Hugging Face side of tools/convert.py: weight names, the q/k RoPE permute, config.json.

The project keeps Meta's layout (`layers.0.attention.wq.weight`, RoPE on interleaved pairs).
HF's LlamaForCausalLM renames every tensor and rotates halves (`rotate_half`) instead of pairs,
so its q/k rows are permuted. Everything here comes in symmetric pairs (`to_hf_*` /
`from_hf_*`) so that `to-hf` followed by `hf` is the identity, bit for bit.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from model.args import ModelArgs


class ConvertError(Exception):
    """A problem with the user's input; the message is one line naming the file and tensor."""


# ------------------------------------------------------------------ weight names
# Per-layer names, project (Meta) -> HF. `layers.{i}.` / `model.layers.{i}.` is prefixed.
LAYER_TO_HF: dict[str, str] = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOP_TO_HF: dict[str, str] = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_FROM_HF = {v: k for k, v in LAYER_TO_HF.items()}
TOP_FROM_HF = {v: k for k, v in TOP_TO_HF.items()}

_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")
_HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Older HF checkpoints saved the RoPE frequency buffer; it is recomputed, never loaded.
HF_IGNORED_RE = re.compile(r".*\.rotary_emb\.inv_freq")


def to_hf_name(name: str) -> str | None:
    """Project name -> HF name; None when the name is not part of a LLaMA."""
    if name in TOP_TO_HF:
        return TOP_TO_HF[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in LAYER_TO_HF:
        return f"model.layers.{m.group(1)}.{LAYER_TO_HF[m.group(2)]}"
    return None


def from_hf_name(name: str) -> str | None:
    """HF name -> project name; None when the name is not part of a LLaMA."""
    if name in TOP_FROM_HF:
        return TOP_FROM_HF[name]
    m = _HF_LAYER_RE.fullmatch(name)
    if m and m.group(2) in LAYER_FROM_HF:
        return f"layers.{m.group(1)}.{LAYER_FROM_HF[m.group(2)]}"
    return None


# ------------------------------------------------------------------ the RoPE permute
def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rows (per head: pairs (0,1), (2,3), ...) -> HF rows (per head: all evens, then all odds).

    HF's `rotate_half` pairs component j with j + hd/2, Meta's complex RoPE pairs 2i with 2i+1;
    reordering the output rows of wq/wk makes the two formulations compute the same attention.
    """
    out_features, dim = w.shape
    hd = out_features // n_heads
    # (n_h, hd/2, 2, dim) -> (n_h, 2, hd/2, dim): evens of each head first, then odds
    return w.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(out_features, dim)


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `permute_to_hf`: HF's half-split rows back to Meta's interleaved pairs."""
    out_features, dim = w.shape
    hd = out_features // n_heads
    # (n_h, 2, hd/2, dim) -> (n_h, hd/2, 2, dim)
    return w.view(n_heads, 2, hd // 2, dim).transpose(1, 2).reshape(out_features, dim)


def _heads_of(name: str, args: ModelArgs) -> int | None:
    """How many heads a q/k projection holds (k uses n_kv_heads); None for other tensors."""
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return None


def tensor_to_hf(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    heads = _heads_of(name, args)
    return t if heads is None else permute_to_hf(t, heads)


def tensor_from_hf(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """`name` is the project name (after `from_hf_name`)."""
    heads = _heads_of(name, args)
    return t if heads is None else permute_from_hf(t, heads)


# ------------------------------------------------------------------ LoRA adapters (PEFT)
# A LoRA run's adapter.safetensors (model/lora.py): `layers.{i}.attention.wq.lora_a.weight` (r, in)
# and `...lora_b.weight` (out, r). PEFT saves the same matrices for LlamaForCausalLM as
# `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (its wrapper's two prefixes,
# no adapter name), and vLLM's loader parses exactly that form.
PEFT_PREFIX = "base_model.model."
_ADAPTER_RE = re.compile(r"layers\.(\d+)\.(attention|feed_forward)\.(w[qkvo123])\.lora_([ab])\.weight")


def parse_adapter_name(name: str) -> tuple[int, str, str] | None:
    """`layers.3.attention.wk.lora_b.weight` -> (3, "wk", "b"); None when it is not one."""
    m = _ADAPTER_RE.fullmatch(name)
    if not m or to_hf_name(f"layers.{m.group(1)}.{m.group(2)}.{m.group(3)}.weight") is None:
        return None
    return int(m.group(1)), m.group(3), m.group(4)


def adapter_to_peft_name(name: str) -> str | None:
    """Project adapter name -> PEFT's key in adapter_model.safetensors; None when not an adapter."""
    parsed = parse_adapter_name(name)
    if parsed is None:
        return None
    hf_module = to_hf_name(name.rsplit(".", 2)[0] + ".weight").removesuffix(".weight")
    return f"{PEFT_PREFIX}{hf_module}.lora_{parsed[2].upper()}.weight"


def adapter_tensor_to_peft(name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF's q/k rows are permuted (W_hf = P W), so the update P(BA) = (PB)A: lora_B's rows move
    exactly as the weight's do (k with n_kv_heads), lora_A is untouched."""
    parsed = parse_adapter_name(name)
    if parsed is None or parsed[2] != "b":
        return t
    return tensor_to_hf(f"layers.{parsed[0]}.attention.{parsed[1]}.weight", t, args)


# ------------------------------------------------------------------ config.json
def args_from_hf_config(cfg: dict, path: Path) -> ModelArgs:
    """HF LlamaConfig (transformers 4.x `rope_scaling` or 5.x `rope_parameters`) -> ModelArgs."""
    if cfg.get("model_type") != "llama":
        raise ConvertError(f"{path}: model_type is {cfg.get('model_type')!r}, only 'llama' is supported")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in cfg:
            raise ConvertError(f"{path}: required key '{key}' is missing")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConvertError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (LLaMA uses silu)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConvertError(f"{path}: attention_bias / mlp_bias are not supported (LLaMA has no biases)")
    dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("head_dim") not in (None, dim // n_heads):
        raise ConvertError(f"{path}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads "
                           f"({dim // n_heads}) is not supported")

    # transformers 5 nests theta inside rope_parameters; 4.x has top-level rope_theta + rope_scaling.
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling: dict = {}
    if rope_type == "llama3":
        try:
            scaling = dict(
                use_scaled_rope=True,
                rope_scale_factor=float(rope["factor"]),
                rope_low_freq_factor=float(rope["low_freq_factor"]),
                rope_high_freq_factor=float(rope["high_freq_factor"]),
                rope_original_max_position_embeddings=int(
                    rope.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))),
            )
        except (KeyError, TypeError) as e:
            raise ConvertError(f"{path}: rope_scaling of type 'llama3' lacks {e}") from None
    elif rope_type != "default":
        raise ConvertError(f"{path}: rope type {rope_type!r} is not supported (only default and llama3)")

    try:
        args = ModelArgs(
            dim=dim,
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            vocab_size=cfg["vocab_size"],
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            **scaling,
        )
    except ValueError as e:
        raise ConvertError(f"{path}: {e}") from None
    # HF states the SwiGLU width outright; keep Meta's multiple_of rule when it gives the same
    # number (LLaMA 1/2), else record it explicitly (ffn_dim_multiplier cannot be recovered).
    if args.hidden_dim != cfg["intermediate_size"]:
        args.ffn_hidden_dim = int(cfg["intermediate_size"])
    return args


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype, bos_id: int | None, eos_id: int | None) -> dict:
    """ModelArgs -> a config.json both transformers 4.x and 5.x read (legacy rope keys)."""
    rope_scaling = None
    if args.use_scaled_rope:
        rope_scaling = {
            "rope_type": "llama3",
            "factor": args.rope_scale_factor,
            "low_freq_factor": args.rope_low_freq_factor,
            "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_max_position_embeddings,
        }
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": rope_scaling,
        "vocab_size": args.vocab_size,
        "tie_word_embeddings": args.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if bos_id is not None and bos_id >= 0:
        cfg["bos_token_id"] = bos_id
    if eos_id is not None and eos_id >= 0:
        cfg["eos_token_id"] = eos_id
    return cfg


def hf_tokenizer_config(sp, max_seq_len: int) -> dict:
    """tokenizer_config.json for a sentencepiece model. Without it AutoTokenizer falls back to a
    generic tokenizer that adds no BOS and drops the word-boundary prefix; with it, it builds
    LlamaTokenizer, whose ids equal sentencepiece's (plus BOS) as in Meta's HF releases."""
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": sp.id_to_piece(sp.bos_id()),
        "eos_token": sp.id_to_piece(sp.eos_id()),
        "unk_token": sp.id_to_piece(sp.unk_id()),
        "pad_token": None,  # LLaMA has none; see docs/DESIGN.md "Padding policy"
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,  # else decode() rewrites " ," as ","
        "model_max_length": max_seq_len,
    }


# ------------------------------------------------------------------ reading HF weight files
def load_pth(path: Path) -> dict[str, torch.Tensor]:
    """torch.load without executing pickled code (weights_only), memory-mapped when the file is
    in the zip format, so a 7B shard costs page cache rather than RAM. Used by the Meta reader too."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # legacy (pre-zipfile) format cannot be memory-mapped: read it into memory instead
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page long; its useful part names the refused class
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it pickles {m.group(1)}" if m else "it holds pickled objects that are not tensors"
        raise ConvertError(f"{path}: refused by torch.load(weights_only=True): {what}, which could run "
                           "code on load; re-save it as plain tensors or safetensors") from None
    except Exception as e:  # truncated or foreign files: the first line of the error says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path}: cannot be read by torch.load: {first}") from None


def hf_weight_files(src: Path) -> dict[Path, list[str] | None]:
    """file -> the tensor names the index promises in it (None: whatever the file holds)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = src / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ConvertError(f"{index}: not a valid index ({e})") from None
            files: dict[Path, list[str] | None] = {}
            for name, fname in weight_map.items():
                files.setdefault(src / fname, []).append(name)  # type: ignore[union-attr]
            for f in files:
                if not f.is_file():
                    raise ConvertError(f"{f}: shard listed in {index.name} is missing "
                                       f"(it holds tensor '{files[f][0]}')")
            return files
        if (src / single).is_file():
            return {src / single: None}
    raise ConvertError(f"{src}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def iter_hf_tensors(files: dict[Path, list[str] | None]) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """Yield (file, HF name, tensor) one at a time; safetensors files are memory-mapped."""
    for path, promised in files.items():
        if path.suffix == ".safetensors":
            try:
                f = safe_open(str(path), framework="pt")
            except SafetensorError as e:
                raise ConvertError(f"{path}: not a readable safetensors file ({e})") from None
            with f:
                present = list(f.keys())
                for name in promised or present:
                    if name not in present:
                        raise ConvertError(f"{path}: tensor '{name}' listed in the index is missing")
                    yield path, name, f.get_tensor(name)
        else:
            sd = load_pth(path)
            for name in promised or list(sd):
                if name not in sd:
                    raise ConvertError(f"{path}: tensor '{name}' listed in the index is missing")
                yield path, name, sd[name]
            del sd
