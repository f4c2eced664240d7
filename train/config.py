"""Training configuration: dataclasses filled from YAML, then `dotted.key=value` overrides.

Why dataclasses and not a dict: every key a user can write is declared here once, with its type
and default, so a typo (`optim.lrr`) is caught before any process group starts, with the closest
valid key in the message, instead of being silently ignored. YAML is read with `yaml.safe_load`
(never evaluated); the resolved config is written to `<output_dir>/config.yaml` so a run can be
reproduced from its output directory alone.

Schema (YAML, every section optional; defaults below):

    output_dir: runs/tiny        # metrics.jsonl, config.yaml, TensorBoard, checkpoints/, final/
    seed: 0                      # model init, data order
    epochs: 3                    # passes over the training set ...
    max_steps: null              # ... unless this is set (optimizer steps), which wins
    resume: none                 # none | auto (newest complete checkpoint in output_dir) | PATH
    tokenizer: null              # sentencepiece model; init_from's tokenizer.model when null
    max_nonfinite: 3             # stop after this many non-finite steps in a row (each is skipped)
    overwrite: false             # a fresh run may replace the results of an earlier one in output_dir
    model:
      preset: debug              # a name in model.args.PRESETS, or null (default)
      init_from: null            # a project checkpoint dir to fine-tune (its config.json wins)
      init_on: auto              # from scratch: host (world-size independent) | device (sharded) | auto (host up to 1B params)
      dim: 64                    # ... any ModelArgs field overrides the preset (not with init_from)
    data: {...}                  # data.config.DataConfig (owned by data/; see its docstring)
    optim: {lr, weight_decay, betas, eps, warmup_ratio, grad_clip, schedule, min_lr_ratio}
    batch: {micro_batch_size, grad_accum}   # global batch = micro * accum * data-parallel ranks
    parallel: {fsdp, shard_size, mixed_precision, activation_checkpointing, ac_every_n, compile, attention,
               tf32, memory_check, memory_gb}
    checkpoint: {every, keep, export, export_dtype, verify, on_error, async_save}
    log: {every, tensorboard}
    eval: {every, heldout, max_batches, samples, max_new_tokens, exact_match}
    lora: {rank, alpha, dropout, targets, rslora, quantize_base}   # absent: full fine-tuning
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from model.attention import Backend


class ConfigError(ValueError):
    """A mistake in the user's config; printed as one line, exit status 2."""


@dataclass
class ModelConfig:
    """Which network to train. Extra keys under `model:` are ModelArgs fields (kept in `args`)."""

    preset: str | None = None  # None: ModelArgs defaults + the fields given (no hidden preset values)
    init_from: str | None = None
    # From scratch: "host" initialises the full model on the CPU with the seed (the same weights
    # for any world size); "device" initialises each rank's shards in place (for models too big
    # to hold on the host once per rank; the weights then depend on the world size); "auto" is
    # host up to train.loop.HOST_INIT_MAX_PARAMS (1B) and device above.
    init_on: Literal["auto", "host", "device"] = "auto"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW + schedule. Stanford's recipe: lr 2e-5, weight decay 0, warmup ratio 0.03, cosine."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03  # warmup steps = ceil(ratio * total steps), as HF's Trainer does
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still reported)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # all after linear warmup
    min_lr_ratio: float = 0.0  # floor of the decay, as a fraction of lr


@dataclass
class BatchConfig:
    micro_batch_size: int = 4  # examples per rank per forward/backward
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass
class ParallelConfig:
    fsdp: Literal["full", "hybrid", "none"] = "full"  # full (shard over all ranks) | hybrid (shard in a node, replicate across) | none
    shard_size: int | None = None  # hybrid: ranks per shard group; default LOCAL_WORLD_SIZE
    mixed_precision: Literal["bf16", "fp32", "pure_bf16"] = "bf16"  # bf16 (fp32 master + fp32 reduce) | fp32 | pure_bf16
    # none | selective (save matmuls) | full (every layer) | every_n
    activation_checkpointing: Literal["none", "selective", "full", "every_n"] = "none"
    ac_every_n: int = 2  # with every_n: checkpoint layers 0, n, 2n, ...
    compile: bool = False  # torch.compile each decoder layer
    # How packed rows attend (model/attention.py): auto = flex on CUDA, one SDPA call per
    # document on CPU | flex | documents | dense (one (B, 1, T, T) mask)
    attention: Backend = "auto"
    tf32: bool = True  # TF32 matmuls on Ampere+ (no effect on CPU)
    # Before the model is built, tools.plan's prediction is checked against each device's memory
    # (memory_gb, default: the GPU's own; on a CPU only when memory_gb is given): error stops
    # with one line naming the smallest change that fits; warn prints it and starts anyway.
    memory_check: Literal["error", "warn", "off"] = "error"
    memory_gb: float | None = None


@dataclass
class CheckpointConfig:
    every: int = 0  # save a resumable sharded checkpoint every N steps; 0 = only on SIGTERM
    keep: int = 2  # newest K kept
    export: bool = True  # consolidated project checkpoint in <output_dir>/final at the end
    export_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    verify: Literal["checksums", "sizes"] = "checksums"  # resume checks: checksums (SHA-256 of every byte) | sizes (stat only, huge ckpts)
    on_error: Literal["stop", "warn"] = "stop"  # a failed periodic save: stop (exit 1) | warn (log it, keep training)
    # Periodic saves written by a background thread while training goes on (docs/CHECKPOINTS.md):
    # true | false | auto (on with CUDA; off on a CPU, where the staged copy takes the same RAM
    # as training and the writer competes for the same cores).
    async_save: bool | Literal["auto"] = "auto"


@dataclass
class LogConfig:
    every: int = 1  # progress line every N steps (metrics.jsonl gets every step)
    tensorboard: bool = True


@dataclass
class EvalConfig:
    every: int = 0  # held-out loss (and sample generations) every N steps; 0 = never
    heldout: str | None = None  # held-out data file (Alpaca JSON); synthetic data fills it in
    max_batches: int = 0  # cap on held-out micro-batches per rank; 0 = the whole file
    samples: int = 2  # greedy generations of held-out prompts written to TensorBoard
    max_new_tokens: int = 64
    exact_match: bool = False  # at the end, greedy exact-match accuracy on `heldout` (train.evaluate)
    # At the end, rank 0 answers IFEval's prompts (this input_data.jsonl) with the exported model
    # and scores them into <output_dir>/eval/ (evaluation.suite, as `make eval` does).
    ifeval: str | None = None


@dataclass
class LoraConfig:
    """Low-rank adapters on a frozen base (model/lora.py); the section's presence turns them on.
    Defaults are alpaca-lora's (r 8, alpha 16, dropout 0.05, q and v projections)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05  # on the adapter's input only, as PEFT does
    targets: list[str] = field(default_factory=lambda: ["wq", "wv"])  # Meta's names, or ["all"]
    rslora: bool = False  # scale alpha / sqrt(rank) (rank-stabilised LoRA) instead of alpha / rank
    quantize_base: Literal["none", "nf4"] = "none"  # nf4: QLoRA, frozen linear weights in NF4 (torchao)


def _data_config_type() -> type:
    from data.config import DataConfig

    return DataConfig


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    epochs: int = 3
    max_steps: int | None = None
    resume: str = "none"
    tokenizer: str | None = None
    max_nonfinite: int = 3
    overwrite: bool = False  # a fresh run may replace an earlier run's results in output_dir
    # Written by the trainer, never read as settings: on each resume, the keys that changed
    # since the checkpoint and the step they took effect from (train/run.py).
    changes: list[dict] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # data.config.DataConfig, filled in by load_config
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig | None = None


# ---------------------------------------------------------------- typed filling
def _unknown(key: str, valid: list[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; YAML 1.1 reads `2e-5` as a string, so numeric
    strings are accepted where a float is declared."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:  # the one declaration of a key's allowed values
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key '{where}' must be one of {', '.join(map(str, allowed))}, got '{value}'{hint}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return _fill(tp, value, where + ".")
    if origin in (list, tuple):
        if isinstance(value, str):  # `paths: file.json` means a list of one
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config key '{where}' must be {name}, got {value!r}")


def _fill(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, rejecting unknown keys with the closest valid one."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(str(key), names, prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a dataclass's own checks (e.g. DataConfig.__post_init__)
        if prefix and str(e).startswith(prefix):
            raise ConfigError(str(e)) from None
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'top level'}': {e}") from None


def _model_config(raw: dict) -> ModelConfig:
    """`model:` holds preset/init_from plus flat ModelArgs fields, checked against ModelArgs."""
    from model.args import ModelArgs

    own = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "args"]
    hints = typing.get_type_hints(ModelArgs)
    valid = own + list(hints)
    out = ModelConfig(args={})
    for key, value in raw.items():
        if key in own:
            setattr(out, key, _coerce(value, typing.get_type_hints(ModelConfig)[key], f"model.{key}"))
        elif key in hints:
            out.args[key] = _coerce(value, hints[key], f"model.{key}")
        else:
            raise _unknown(str(key), valid, "model.")
    return out


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """YAML file + `key=value` overrides (values parsed as YAML scalars) -> validated TrainConfig."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=1e-5)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        _set_dotted(raw, key.strip(), value)

    raw = dict(raw)
    model_raw = raw.pop("model", None) or {}
    data_raw = raw.pop("data", None) or {}
    for section, value in (("model", model_raw), ("data", data_raw)):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{section}' must be a mapping, got {value!r}")
    cfg = _fill(TrainConfig, raw)
    cfg.model = _model_config(model_raw)
    cfg.data = _coerce(data_raw, _data_config_type(), "data")
    _check(cfg)
    return cfg


def _check(cfg: TrainConfig) -> None:
    """Value checks that types alone cannot express."""
    positive = {"batch.micro_batch_size": cfg.batch.micro_batch_size, "batch.grad_accum": cfg.batch.grad_accum,
                "log.every": cfg.log.every, "checkpoint.keep": cfg.checkpoint.keep,
                "parallel.ac_every_n": cfg.parallel.ac_every_n, "max_nonfinite": cfg.max_nonfinite}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {v}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"config key 'max_steps' must be >= 1 or null, got {cfg.max_steps}")
    if cfg.epochs < 1 and cfg.max_steps is None:
        raise ConfigError("config key 'epochs' must be >= 1 when max_steps is not set")
    if not 0.0 <= cfg.optim.warmup_ratio < 1.0:
        raise ConfigError(f"config key 'optim.warmup_ratio' must be in [0, 1), got {cfg.optim.warmup_ratio}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' must be two numbers, got {cfg.optim.betas}")
    if cfg.model.init_from is None and cfg.model.preset is None and not cfg.model.args:
        raise ConfigError("config key 'model': give a preset, ModelArgs fields, or init_from")
    if cfg.parallel.mixed_precision == "pure_bf16" and cfg.model.init_from is not None:
        raise ConfigError("parallel.mixed_precision=pure_bf16 is refused for fine-tuning (model.init_from): "
                          "bf16 weights round away updates as small as lr 2e-5 gives; use bf16 "
                          "(bf16 compute on fp32 master weights)")
    if cfg.lora is not None:
        _check_lora(cfg)
    if cfg.model.init_from is not None and cfg.model.args:
        raise ConfigError(f"config key 'model.{next(iter(cfg.model.args))}' cannot be combined with "
                          "model.init_from (the checkpoint's config.json fixes the architecture)")


def _check_lora(cfg: TrainConfig) -> None:
    from model.lora import HF_NAMES, TARGETS

    lora = cfg.lora
    if lora.rank < 1:
        raise ConfigError(f"config key 'lora.rank' must be >= 1, got {lora.rank}")
    if lora.alpha <= 0:
        raise ConfigError(f"config key 'lora.alpha' must be > 0, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"config key 'lora.dropout' must be in [0, 1), got {lora.dropout}")
    for name in lora.targets:
        if name != "all" and name not in TARGETS:
            meta = {hf: m for m, hf in HF_NAMES.items()}.get(name)
            close = [meta] if meta else difflib.get_close_matches(name, TARGETS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"config key 'lora.targets': unknown target '{name}'{hint}; "
                              f"valid: {', '.join(TARGETS)} or all (Meta's names)")
    if not lora.targets:
        raise ConfigError("config key 'lora.targets' is empty; name at least one of " + ", ".join(TARGETS))
    if cfg.model.init_from is None:
        raise ConfigError("lora: adapters need a base model to adapt: set model.init_from to a converted checkpoint")
    if cfg.parallel.mixed_precision == "pure_bf16":
        raise ConfigError("lora with parallel.mixed_precision=pure_bf16 is refused: adapters train in fp32 "
                          "(mixed_precision=bf16 computes in bf16 and keeps the base frozen in bf16)")


def to_dict(cfg: TrainConfig) -> dict:
    """The resolved config as plain YAML-able data (ModelArgs fields flat under `model:`)."""
    out = dataclasses.asdict(cfg)
    model = out.pop("model")
    out["model"] = {"preset": model["preset"], "init_from": model["init_from"], "init_on": model["init_on"],
                    **model["args"]}
    out["data"] = dataclasses.asdict(cfg.data) if dataclasses.is_dataclass(cfg.data) else cfg.data
    return out


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Atomic write (temp + rename) of the resolved config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


# On resume, keys whose change would alter what the saved state means are refused (model shape,
# data and template, seed, master-weight dtype); every other key (lr and schedule, max_steps,
# epochs, eval, checkpoint cadence, logging, parallel layout) is applied from the resumed step.
# The batch split may change only with the global batch kept (train/run.py checks that).
REFUSED_ON_RESUME = ("model.", "data.", "seed", "tokenizer", "parallel.mixed_precision", "lora")
IGNORED_ON_RESUME = ("resume", "output_dir", "changes", "overwrite", "data.cache_dir", "data.num_proc")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def resume_changes(saved: dict, new: dict) -> tuple[dict, dict]:
    """(refused, applied): dotted key -> (saved value, new value) for every key that differs."""
    old, cur = _flat(saved), _flat(new)
    refused, applied = {}, {}
    for key in sorted(set(old) | set(cur)):
        if key.startswith(IGNORED_ON_RESUME) or old.get(key) == cur.get(key):
            continue
        target = refused if key.startswith(REFUSED_ON_RESUME) else applied
        target[key] = (old.get(key), cur.get(key))
    return refused, applied
