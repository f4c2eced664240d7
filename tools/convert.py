"""Convert LLaMA weights into the project checkpoint format, and back out to Hugging Face.

    python -m tools.convert meta  SRC DST [--tokenizer PATH]   # consolidated.NN.pth + params.json
    python -m tools.convert hf    SRC DST [--tokenizer PATH]   # HF LlamaForCausalLM directory
    python -m tools.convert to-hf SRC DST                      # project checkpoint -> HF directory
    python -m tools.convert to-peft SRC DST [--base NAME]      # a LoRA run's adapter -> PEFT directory

The project keeps Meta's layout, so `meta` only merges model-parallel shards, while `hf` and
`to-hf` rename tensors and permute the q/k rows (tools/convert_hf.py); `to-peft` does the same to
a LoRA run's adapter (lora_B of wq/wk takes the q/k row permute), for PEFT and vLLM on the `to-hf`
base. Every tensor's shape is checked against the config before anything is written; output goes
to a temporary directory beside DST that is renamed at the end, so a failed conversion leaves no
DST behind. Tensors stream one at a
time (sources are memory-mapped), so memory stays near one copy of the model. Errors the user can
cause are reported as one line naming the file and tensor, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from model.args import ModelArgs
from model.checkpoint import (
    CheckpointError,
    atomic_dir,
    commit_dir,
    iter_tensors,
    load_args,
    save_checkpoint,
    write_shards,
)
from model.llama import Transformer
from model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HF_NAMES, TARGETS, lora_scale
from model.manifest import (
    MANIFEST_NAME,
    ManifestError,
    check_checksums,
    check_sizes,
    read_manifest,
    write_manifest,
)
from model.tokenizer import TokenizerError, load_tokenizer, vocab_mismatch
from tools.convert_hf import (
    HF_IGNORED_RE,
    ConvertError,
    adapter_tensor_to_peft,
    adapter_to_peft_name,
    args_from_hf_config,
    from_hf_name,
    hf_config_from_args,
    hf_weight_files,
    iter_hf_tensors,
    load_pth,
    parse_adapter_name,
    tensor_from_hf,
    tensor_to_hf,
    to_hf_name,
)
from tools.hf_tokenizer import write_hf_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------ shared checks
def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor a model with `args` holds, read off a meta-device build, so
    the converter can never disagree with model/llama.py about names or shapes."""
    with torch.device("meta"):
        model = Transformer(args)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tokenizer_vocab(path: Path) -> int:
    """Number of ids a tokenizer file produces: sentencepiece (LLaMA 1/2) or tiktoken (Llama 3)."""
    try:
        return load_tokenizer(path).vocab_size
    except TokenizerError as e:
        raise ConvertError(str(e)) from None


def check_tokenizer(path: Path | None, vocab_size: int) -> None:
    if path is None:
        return
    problem = vocab_mismatch(path, tokenizer_vocab(path), vocab_size)
    if problem:
        raise ConvertError(problem)


def find_tokenizer(src: Path, explicit: str | None, candidates: tuple[str, ...]) -> Path | None:
    """--tokenizer if given, else the first of `candidates` (paths relative to SRC) that exists."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConvertError(f"{path}: tokenizer file not found")
        return path
    for cand in candidates:
        if (src / cand).is_file():
            return (src / cand).resolve()
    return None  # main() warns after a successful conversion (errors stay one line)


def read_json(path: Path, what: str) -> dict:
    """A source's config file, or a one-line ConvertError saying which file is missing or broken."""
    if not path.is_file():
        raise ConvertError(f"{path}: not found (is {path.parent} {what}?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: invalid JSON ({e})") from None


def check_dst(dst: Path, force: bool) -> None:
    if dst.exists() and any(dst.iterdir()) and not force:
        raise ConvertError(f"{dst}: already exists and is not empty (pass --force to replace it)")


def _progress(iterable, **kw):
    # disable=None: progress bars only on a terminal, so logs and captured stderr stay clean
    return tqdm(iterable, disable=None, file=sys.stderr, **kw)


# ------------------------------------------------------------------ meta
# How model-parallel shards split each tensor (Meta's ColumnParallel = dim 0, RowParallel = dim 1).
_CAT_DIM = {"attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "feed_forward.w1": 0,
            "feed_forward.w3": 0, "output": 0, "attention.wo": 1, "feed_forward.w2": 1}
_REPLICATED = ("attention_norm.weight", "ffn_norm.weight", "norm.weight")
_SHARD_RE = re.compile(r"consolidated\.(\d+)\.pth")
# params.json keys of Meta's llama-models releases whose ModelArgs field is named differently here.
_PARAM_ALIASES = {"rope_scaling_factor": "rope_scale_factor", "high_freq_factor": "rope_high_freq_factor",
                  "low_freq_factor": "rope_low_freq_factor"}


def meta_shards(src: Path) -> list[Path]:
    """consolidated.00.pth ... consolidated.NN.pth, numbered without gaps."""
    found = {int(m.group(1)): p for p in src.iterdir() if (m := _SHARD_RE.fullmatch(p.name))}
    if not found:
        raise ConvertError(f"{src}: no consolidated.NN.pth files")
    for i in range(max(found) + 1):
        if i not in found:
            raise ConvertError(f"{src / f'consolidated.{i:02d}.pth'}: model-parallel shard is missing "
                               f"(found {len(found)} of {max(found) + 1})")
    return [found[i] for i in sorted(found)]


def cat_dim(name: str, part_shape: tuple[int, ...], dim: int, n_shards: int) -> int | None:
    """The dimension shards of `name` are concatenated along; None = replicated (take shard 0)."""
    if n_shards == 1 or name.endswith(_REPLICATED):
        return None
    if name == "tok_embeddings.weight":
        # LLaMA 1/2 (fairscale ParallelEmbedding) split the embedding width; Llama 3
        # (VocabParallelEmbedding) splits the vocabulary: full width in a shard means the latter.
        return 0 if part_shape[1] == dim else 1
    key = name.removesuffix(".weight")  # "layers.3.attention.wq" -> "attention.wq"; "output"
    return _CAT_DIM[key.split(".", 2)[2] if key.startswith("layers.") else key]


def plan_merge(shards: list[Path], states: list[dict[str, torch.Tensor]],
               expected: dict[str, tuple[int, ...]], dim: int) -> list[tuple[str, int | None]]:
    """(name, concat dim) for every tensor to write, after checking every name and merged shape
    from the shard metadata alone: nothing is written when any of them is wrong."""
    n = len(shards)
    plan: list[tuple[str, int | None]] = []
    for name, t0 in states[0].items():
        if name == "rope.freqs":  # a precomputed buffer; the model recomputes it
            continue
        if name not in expected:
            raise ConvertError(f"{shards[0]}: unknown tensor '{name}' (not part of a model with this params.json)")
        for path, sd in zip(shards, states, strict=True):
            if name not in sd:
                raise ConvertError(f"{path}: tensor '{name}' is missing (present in {shards[0].name})")
            if sd[name].shape != t0.shape:
                raise ConvertError(f"{path}: tensor '{name}' has shape {tuple(sd[name].shape)}, "
                                   f"{shards[0].name} has {tuple(t0.shape)}")
        d = cat_dim(name, tuple(t0.shape), dim, n)
        merged = list(t0.shape)
        if d is not None:
            merged[d] *= n
        if tuple(merged) != expected[name]:
            where = shards[0] if n == 1 else f"{shards[0]} (merged over {n} shards)"
            short = [e // m for m, e in zip(merged, expected[name], strict=False) if m != e and m and e % m == 0]
            hint = " (is a model-parallel shard missing?)" if short and max(short) > 1 else ""
            raise ConvertError(f"{where}: tensor '{name}' has shape {tuple(merged)}, "
                               f"params.json implies {expected[name]}{hint}")
        plan.append((name, d))
    missing = sorted(set(expected) - {name for name, _ in plan})
    if missing:
        raise ConvertError(f"{shards[0]}: tensor '{missing[0]}' is missing"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for path, sd in zip(shards[1:], states[1:], strict=True):
        extra = sorted(set(sd) - set(states[0]))
        if extra:
            raise ConvertError(f"{path}: unknown tensor '{extra[0]}' (absent from {shards[0].name})")
    return plan


def convert_meta(src: Path, dst: Path, tokenizer: str | None, dtype: torch.dtype | None,
                 max_seq_len: int | None) -> Path:
    params_path = src / "params.json"
    params = read_json(params_path, "a Meta checkpoint directory")
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise ConvertError(f"{params_path}: required key '{key}' is missing")
    shards = meta_shards(src)
    # Meta's Llama 2 download keeps tokenizer.model beside the model directories, one level up
    tok_path = find_tokenizer(src, tokenizer, ("tokenizer.model", "../tokenizer.model"))
    states = [load_pth(p) for p in _progress(shards, desc="loading shards", unit="shard")]
    n = len(shards)
    if params.get("vocab_size", -1) <= 0:  # LLaMA 1/2 params.json say -1: the embedding's rows decide
        emb = states[0].get("tok_embeddings.weight")
        if emb is None:
            raise ConvertError(f"{shards[0]}: tensor 'tok_embeddings.weight' is missing")
        split = cat_dim("tok_embeddings.weight", tuple(emb.shape), params["dim"], n)
        params["vocab_size"] = emb.shape[0] * (n if split == 0 else 1)
    for meta_name, ours in _PARAM_ALIASES.items():
        if meta_name in params:
            params[ours] = params.pop(meta_name)
    if max_seq_len is not None:
        params["max_seq_len"] = max_seq_len
    elif "max_seq_len" not in params and params["vocab_size"] >= 128000:  # Llama 3 / 3.1 context
        params["max_seq_len"] = 131072 if params.get("use_scaled_rope") else 8192
    try:
        args = ModelArgs.from_dict(params)
    except (ValueError, TypeError) as e:
        raise ConvertError(f"{params_path}: {e}") from None
    check_tokenizer(tok_path, args.vocab_size)
    expected = expected_shapes(args)

    plan = plan_merge(shards, states, expected, args.dim)

    def merged_tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, d in _progress(plan, desc="merging", unit="tensor"):
            parts = [sd[name] for sd in states]
            if d is None:
                for path, p in zip(shards[1:], parts[1:], strict=True):
                    if not torch.equal(p, parts[0]):
                        raise ConvertError(f"{path}: replicated tensor '{name}' differs from {shards[0].name}")
                t = parts[0]
            else:
                t = torch.cat(parts, dim=d)
            yield name, t if dtype is None else t.to(dtype)

    return save_checkpoint(merged_tensors(), args, dst, tokenizer_path=tok_path)


# ------------------------------------------------------------------ hf
def convert_hf(src: Path, dst: Path, tokenizer: str | None, dtype: torch.dtype | None) -> Path:
    cfg_path = src / "config.json"
    cfg = read_json(cfg_path, "a Hugging Face model directory")
    args = args_from_hf_config(cfg, cfg_path)
    files = hf_weight_files(src)
    # meta-llama repos ship Meta's original files beside HF's, as original/tokenizer.model
    tok_path = find_tokenizer(src, tokenizer, ("tokenizer.model", "original/tokenizer.model"))
    check_tokenizer(tok_path, args.vocab_size)
    expected = expected_shapes(args)

    def converted() -> Iterator[tuple[str, torch.Tensor]]:
        seen: set[str] = set()
        for path, hf_name, t in _progress(iter_hf_tensors(files), desc="converting", unit="tensor"):
            if HF_IGNORED_RE.fullmatch(hf_name):
                continue
            name = from_hf_name(hf_name)
            if name == "output.weight" and args.tie_word_embeddings:
                continue  # tied: the logits reuse tok_embeddings; a saved copy is redundant
            if name is None or name not in expected:
                raise ConvertError(f"{path}: unknown tensor '{hf_name}' (not part of a LLaMA with this config.json)")
            if tuple(t.shape) != expected[name]:
                raise ConvertError(f"{path}: tensor '{hf_name}' has shape {tuple(t.shape)}, "
                                   f"config.json implies {expected[name]}")
            t = tensor_from_hf(name, t, args)
            seen.add(name)
            yield name, t if dtype is None else t.to(dtype)
        missing = sorted(set(expected) - seen)
        if missing:
            raise ConvertError(f"{src}: tensor '{to_hf_name(missing[0])}' is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    # save_checkpoint writes into a temp dir and removes it if the stream raises: no half DST.
    return save_checkpoint(converted(), args, dst, tokenizer_path=tok_path)


# ------------------------------------------------------------------ to-hf
def convert_to_hf(src: Path, dst: Path, dtype: torch.dtype | None, max_shard_bytes: int) -> Path:
    """Project checkpoint -> a directory `LlamaForCausalLM.from_pretrained` loads."""
    try:
        args = load_args(src)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    tok_src = src / "tokenizer.model"
    tokenizer = None
    if tok_src.is_file():
        check_tokenizer(tok_src, args.vocab_size)
        tokenizer = load_tokenizer(tok_src)
    expected = expected_shapes(args)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_dir(dst)
    try:
        seen: set[str] = set()
        dtypes: list[torch.dtype] = []

        def hf_tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for path, name, t in _progress(iter_tensors(src), desc="converting", unit="tensor"):
                seen.add(name)
                if name not in expected or tuple(t.shape) != expected[name]:
                    raise ConvertError(f"{path}: tensor '{name}' with shape {tuple(t.shape)} does not fit "
                                       f"config.json (expected {expected.get(name, 'no such tensor')})")
                t = tensor_to_hf(name, t, args).to(dtype or t.dtype)
                dtypes.append(t.dtype)
                yield to_hf_name(name), t

        write_shards(hf_tensors(), tmp, max_shard_bytes)  # HF's own file layout, one shard in memory
        missing = sorted(set(expected) - seen)
        if missing:
            raise ConvertError(f"{src}: tensor '{missing[0]}' is missing")
        out_dtype = dtypes[-1] if dtypes else torch.float32
        bos, eos = (tokenizer.bos_id, tokenizer.eos_id) if tokenizer else (None, None)
        cfg = hf_config_from_args(args, out_dtype, bos, eos)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if tokenizer is not None:  # tokenizer.model, tokenizer_config.json, Llama 3's tokenizer.json
            write_hf_tokenizer(tokenizer, tmp, args.max_seq_len)
        write_manifest(tmp)  # last, as save_checkpoint does: sizes + SHA-256 of every file
        commit_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# ------------------------------------------------------------------ to-peft
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def read_adapter_meta(src: Path) -> dict:
    """adapter.json of a LoRA run's export, checked field by field (one-line errors)."""
    path = src / ADAPTER_CONFIG
    meta = read_json(path, "a LoRA run's export")
    if not isinstance(meta, dict):
        raise ConvertError(f"{path}: not a JSON object")

    def field(key: str, ok, what: str):
        if key not in meta:
            raise ConvertError(f"{path}: required key '{key}' is missing")
        if not ok(meta[key]):
            raise ConvertError(f"{path}: '{key}' must be {what}, got {meta[key]!r}")
        return meta[key]

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    rank = field("rank", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")
    alpha = field("alpha", lambda v: number(v) and v > 0, "a number > 0")
    rslora = field("rslora", lambda v: isinstance(v, bool), "true or false")
    dropout = field("dropout", lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)")
    targets = field("targets", lambda v: isinstance(v, list) and v and all(t in TARGETS for t in v),
                    f"a non-empty list of {', '.join(TARGETS)}")
    scale = field("scale", number, "a number")
    if abs(scale - lora_scale(rank, alpha, rslora)) > 1e-6 * abs(scale):
        # PEFT and vLLM recompute the scale from r, lora_alpha and use_rslora: it must agree
        raise ConvertError(f"{path}: scale {scale} disagrees with rank {rank}, alpha {alpha}, rslora {rslora} "
                           f"({'alpha / sqrt(rank)' if rslora else 'alpha / rank'} = {lora_scale(rank, alpha, rslora)})")
    return {"rank": rank, "alpha": alpha, "rslora": rslora, "dropout": float(dropout),
            "targets": [t for t in TARGETS if t in targets]}


def peft_config(meta: dict, base: str | None) -> dict:
    """adapter_config.json: the fields PEFT's LoraConfig.save_pretrained writes that say what the
    adapter is (PEFT fills the rest with its defaults; vLLM reads r, lora_alpha, target_modules,
    use_rslora, bias, use_dora, modules_to_save)."""
    alpha = meta["alpha"]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": meta["rank"],
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": meta["dropout"],
        "target_modules": [HF_NAMES[t] for t in meta["targets"]],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": meta["rslora"],
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def convert_to_peft(src: Path, dst: Path, dtype: torch.dtype | None, base: str | None) -> Path:
    """A LoRA run's export (merged weights + adapter.json + adapter.safetensors) -> a PEFT adapter
    directory for the `to-hf` export of the base model."""
    if not (src / ADAPTER_CONFIG).is_file():
        raise ConvertError(f"{src / ADAPTER_CONFIG}: not found, so {src} is not a LoRA run's export: nothing "
                           "to export as an adapter (use to-hf for the merged model)")
    weights = src / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConvertError(f"{weights}: not found ({ADAPTER_CONFIG} is there: the export is incomplete)")
    if (src / MANIFEST_NAME).is_file():
        # sizes of every file; the SHA-256 of the adapter's own files only (the merged weights are
        # not read here, and hashing 13 GB to export 20 MB would be slow)
        try:
            files = read_manifest(src)["files"]
            check_sizes(src, files)
            check_checksums(src, files, [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if n in files])
        except ManifestError as e:
            raise ConvertError(str(e)) from None
    meta = read_adapter_meta(src)
    try:
        args = load_args(src)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None

    # every adapted module's base weight shape, for each (layer, target) the run adapted
    expected: dict[str, tuple[int, ...]] = {}
    for name, (out_f, in_f) in ((n, s) for n, s in expected_shapes(args).items() if len(s) == 2):
        module = name.removesuffix(".weight")
        if name.startswith("layers.") and module.rpartition(".")[2] in meta["targets"]:
            expected[f"{module}.lora_a.weight"] = (meta["rank"], in_f)
            expected[f"{module}.lora_b.weight"] = (out_f, meta["rank"])

    tensors: dict[str, torch.Tensor] = {}
    try:
        f = safe_open(str(weights), framework="pt")
    except SafetensorError as e:
        raise ConvertError(f"{weights}: not a readable safetensors file ({e})") from None
    with f:
        for name in f.keys():
            if parse_adapter_name(name) is None or name not in expected:
                raise ConvertError(f"{weights}: unknown tensor '{name}' (not an adapter of a model with this "
                                   f"config.json and targets {meta['targets']})")
            t = f.get_tensor(name)
            if tuple(t.shape) != expected[name]:
                raise ConvertError(f"{weights}: tensor '{name}' has shape {tuple(t.shape)}, config.json and "
                                   f"{ADAPTER_CONFIG} (rank {meta['rank']}) imply {expected[name]}")
            t = adapter_tensor_to_peft(name, t, args)
            tensors[adapter_to_peft_name(name)] = t.to(dtype or t.dtype).contiguous()
    missing = sorted(n for n in expected if adapter_to_peft_name(n) not in tensors)
    if missing:
        raise ConvertError(f"{weights}: tensor '{missing[0]}' is missing"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_dir(dst)
    try:
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft_config(meta, base), indent=2) + "\n")
        write_manifest(tmp)
        commit_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# ------------------------------------------------------------------ CLI
def _size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", text)
    if not m or (m.group(2) and m.group(2).upper() not in units):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    return int(float(m.group(1)) * units.get(m.group(2).upper(), 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.convert", description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 converted; 2 bad input (a missing or malformed source, "
                                       "an existing destination without --force, arguments), one line on stderr.")
    sub = p.add_subparsers(dest="fmt", required=True)
    for fmt, help_ in (("meta", "Meta consolidated.NN.pth + params.json -> project checkpoint"),
                       ("hf", "Hugging Face LlamaForCausalLM directory -> project checkpoint"),
                       ("to-hf", "project checkpoint -> Hugging Face LlamaForCausalLM directory"),
                       ("to-peft", "a LoRA run's export (final/ with adapter.json) -> PEFT adapter directory "
                                   "(adapter_config.json + adapter_model.safetensors) for the to-hf base")):
        s = sub.add_parser(fmt, help=help_)
        s.add_argument("src", type=Path)
        s.add_argument("dst", type=Path)
        s.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: keep the source dtype)")
        s.add_argument("--force", action="store_true", help="replace DST if it exists")
        if fmt in ("meta", "hf"):
            s.add_argument("--tokenizer", help="tokenizer.model to copy (default: SRC/, then SRC/.. for meta, "
                           "SRC/original/ for hf)")
        if fmt == "meta":
            s.add_argument("--max-seq-len", type=int,
                           help="context length to record (params.json has none; default 2048, Llama 3: 8192/131072)")
        if fmt == "to-hf":
            s.add_argument("--max-shard-size", type=_size, default=5 * 10**9, help="default 5GB")
        if fmt == "to-peft":
            s.add_argument("--base", help="base_model_name_or_path to record (a hub id or the to-hf directory "
                           "of the base model; default: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    dtype = DTYPES[a.dtype] if a.dtype else None
    try:
        if not a.src.is_dir():
            raise ConvertError(f"{a.src}: not a directory")
        check_dst(a.dst, a.force)
        if a.fmt == "meta":
            out = convert_meta(a.src, a.dst, a.tokenizer, dtype, a.max_seq_len)
        elif a.fmt == "hf":
            out = convert_hf(a.src, a.dst, a.tokenizer, dtype)
        elif a.fmt == "to-hf":
            out = convert_to_hf(a.src, a.dst, dtype, a.max_shard_size)
        else:
            out = convert_to_peft(a.src, a.dst, dtype, a.base)
    except (ConvertError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SafetensorError, OSError) as e:  # a corrupt project checkpoint (to-hf), a full disk
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if a.fmt != "to-peft" and not (out / "tokenizer.model").is_file():
        print(f"warning: no tokenizer.model found for {a.src}; {out} has none: "
              "pass --tokenizer PATH or copy one in before using tools.chat", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
