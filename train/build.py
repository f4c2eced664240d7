"""From a config to the things a step needs: data assets, tokenizer, ModelArgs, and the wrapped
model with its optimizer and schedule. The trainer and the tools that train a few steps
(tools.plan --measure, tools.gpu_check, tools.bench_checkpoint) all build here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from model.args import ModelArgs
from model.checkpoint import load_args, load_state_dict
from model.llama import Transformer
from model.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from train import checkpoint as ckpt
from train import parallel
from train.config import ConfigError, TrainConfig
from train.distributed import DistInfo, barrier
from train.optim import build_optimizer, build_scheduler

# From scratch, a model above this size is initialised shard by shard on the devices (init_on:
# auto): a host copy per rank is 4 bytes x params x ranks per node, 224 GB for 7B on 8 GPUs.
HOST_INIT_MAX_PARAMS = 1_000_000_000


@dataclasses.dataclass
class Inputs:
    """What the run reads: the data config with real file paths, the tokenizer and its file,
    the held-out file (or None), the model's shape."""

    data: object  # data.config.DataConfig
    tokenizer: Tokenizer
    tokenizer_path: str
    heldout: str | None
    args: ModelArgs


def resolve_inputs(cfg: TrainConfig, info: DistInfo) -> Inputs:
    """Synthetic tiny default: rank 0 writes the tasks and trains the tokenizer first (cached).
    Everything missing is one line naming what to do (exit 2)."""
    data, tokenizer_path, heldout = cfg.data, cfg.tokenizer, cfg.eval.heldout
    if cfg.data.source == "synthetic":
        from data.synthetic import build_tiny_assets

        out = Path(cfg.output_dir) / "assets"
        if info.is_main:
            build_tiny_assets(out, cfg.seed)
        barrier()
        assets = build_tiny_assets(out, cfg.seed)  # cached: the paths rank 0 just wrote
        data = dataclasses.replace(cfg.data, source="files", paths=[assets["train"]])
        tokenizer_path, heldout = tokenizer_path or assets["tokenizer"], heldout or assets["heldout"]
    init_from = cfg.model.init_from
    if init_from and not (Path(init_from) / "config.json").is_file():
        raise ConfigError(f"model.init_from: {init_from} holds no converted checkpoint; convert the weights "
                          f"first: python -m tools.convert hf|meta SOURCE_DIR {init_from}")
    tokenizer_path = tokenizer_path or (str(Path(init_from) / "tokenizer.model") if init_from else None)
    if not tokenizer_path or not Path(tokenizer_path).is_file():
        raise ConfigError(f"tokenizer not found: {tokenizer_path} (set `tokenizer:` in the config)")
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except TokenizerError as e:  # neither format: one line naming the file
        raise ConfigError(str(e)) from None
    args = model_args(cfg, tokenizer)
    limit = cfg.data.pack_len if cfg.data.packing else cfg.data.max_len
    if limit > args.max_seq_len:
        key = "data.pack_len" if cfg.data.packing else "data.max_len"
        raise ConfigError(f"{key}={limit} is longer than the model's max_seq_len={args.max_seq_len}")
    return Inputs(data, tokenizer, tokenizer_path, heldout, args)


def args_from_config(cfg: TrainConfig, default_vocab: int) -> ModelArgs:
    """init_from's config.json, else the preset with the config's overrides (vocab_size, unless
    pinned, is `default_vocab`)."""
    if cfg.model.init_from:
        return load_args(cfg.model.init_from)
    fields = dict(cfg.model.args)
    fields.setdefault("vocab_size", default_vocab)
    try:
        return ModelArgs.preset(cfg.model.preset, **fields) if cfg.model.preset else ModelArgs.from_dict(fields)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def model_args(cfg: TrainConfig, tokenizer: Tokenizer) -> ModelArgs:
    """The run's ModelArgs, vocab from the tokenizer unless pinned, checked against it."""
    args = args_from_config(cfg, tokenizer.vocab_size)
    if tokenizer.vocab_size > args.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, "
                          f"the model only {args.vocab_size} embeddings")
    return args


def init_on(cfg: TrainConfig, args: ModelArgs) -> str:
    if cfg.model.init_on != "auto":
        return cfg.model.init_on
    return "host" if args.num_params() <= HOST_INIT_MAX_PARAMS else "device"


def build_model(cfg: TrainConfig, args: ModelArgs, mesh, info: DistInfo) -> Transformer:
    """A sharded model on `info.device`, initialised from scratch or from `model.init_from`.

    Every path builds on the meta device first (no memory) and then draws the same random
    numbers in the same order (seed, then `init_weights`), so on one rank host and device
    initialisation give the same weights (tests/test_train_memory.py)."""
    pcfg = cfg.parallel
    parallel.check_supported(pcfg, cfg.data.packing, info.device)
    with torch.device("meta"):
        model = Transformer(args)
    model.to(parallel.param_dtype(pcfg))
    if cfg.lora is not None:
        return _build_lora(cfg, model, mesh, info)
    if cfg.model.init_from or init_on(cfg, args) == "device":
        # Shard, allocate only this rank's shards, then fill them: from the checkpoint rank 0
        # reads, or with a fresh init of each shard.
        _wrap(model, mesh, pcfg, info.device)
        model.to_empty(device=info.device)
        if cfg.model.init_from:
            full = load_state_dict(cfg.model.init_from) if info.is_main else {}
            ckpt.load_pretrained(model, full)
            del full
        else:
            torch.manual_seed(cfg.seed)
            model.init_weights()  # on DTensor shards
    else:
        # Host: the full model is initialised on the CPU with the run's seed, so the weights do
        # not depend on the world size (that is what makes world 1 == world 2 testable);
        # fully_shard then keeps only this rank's shard and moves it to the device.
        model.to_empty(device="cpu")
        torch.manual_seed(cfg.seed)
        model.init_weights()
        _wrap(model, mesh, pcfg, info.device)
    return model


def _build_lora(cfg: TrainConfig, model: Transformer, mesh, info: DistInfo) -> Transformer:
    """Adapters on a frozen `init_from` base (model/lora.py). The base is stored in the compute
    dtype (bf16 under mixed precision: no fp32 master is needed for weights that never change),
    or NF4; the adapters keep fp32 masters. Fresh adapters are drawn on the host from the seed,
    so they do not depend on the world size."""
    from model import lora

    lcfg = cfg.lora
    lora.apply_lora(model, lcfg.rank, lcfg.alpha, lcfg.dropout, lcfg.targets, lcfg.rslora)
    frozen_dtype = parallel.compute_dtype(cfg.parallel)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(frozen_dtype)
    adapters = lora.initial_adapters(model, cfg.seed) if info.is_main else {}
    if lcfg.quantize_base == "nf4":
        from train.qlora import load_quantized

        load_quantized(model, cfg.model.init_from, adapters, mesh, cfg.parallel, info)
    else:
        full = {**load_state_dict(cfg.model.init_from), **adapters} if info.is_main else {}
        _wrap(model, mesh, cfg.parallel, info.device)
        model.to_empty(device=info.device)
        ckpt.load_pretrained(model, full)
    # Adapter dropout draws from this generator: seeded, and per rank (ranks see other examples).
    torch.manual_seed(cfg.seed + info.rank)
    return model


def base_identity(cfg: TrainConfig) -> dict | None:
    """What a LoRA run's adapters belong to: the base checkpoint's path and the SHA-256 of its
    manifest (which hashes every weight file), so resuming onto other weights is caught."""
    if cfg.lora is None:
        return None
    from model.manifest import MANIFEST_NAME, sha256_file

    manifest = Path(cfg.model.init_from) / MANIFEST_NAME
    return {"path": cfg.model.init_from, "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None}


def adapter_info(cfg: TrainConfig) -> dict | None:
    """adapter.json of a LoRA run's export (tools.convert to-peft reads it)."""
    if cfg.lora is None:
        return None
    from model.lora import lora_scale, resolve_targets

    lc = cfg.lora
    return {"rank": lc.rank, "alpha": lc.alpha, "rslora": lc.rslora, "dropout": lc.dropout,
            "targets": resolve_targets(lc.targets), "scale": lora_scale(lc.rank, lc.alpha, lc.rslora),
            "quantize_base": lc.quantize_base, "base": base_identity(cfg)}


def _wrap(model: Transformer, mesh, pcfg, device: torch.device) -> None:
    parallel.apply_activation_checkpointing(model, pcfg)
    if pcfg.compile:
        parallel.apply_compile(model)
    if parallel.uses_fsdp(pcfg, mesh.size()):
        parallel.apply_fsdp(model, mesh, pcfg)
    elif model.tok_embeddings.weight.device.type != "meta":  # a meta model gets to_empty(device) next
        model.to(device)


def build_training(cfg: TrainConfig, args: ModelArgs, info: DistInfo,
                   total_steps: int) -> tuple[Transformer, torch.optim.Optimizer, LambdaLR]:
    """Mesh, wrapped model, AdamW and the lr schedule for `total_steps`."""
    mesh = parallel.build_mesh(cfg.parallel, info)
    model = build_model(cfg, args, mesh, info)
    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    return model, optimizer, build_scheduler(optimizer, cfg.optim, total_steps)
