"""The training loop: one function, read top to bottom.

    setup      process group, mesh, data assets, tokenizer, model (FSDP2), data loader,
               optimizer + schedule, resume
    each step  grad_accum micro-batches -> loss summed over tokens / targets of the whole step
               (all micro-batches, all ranks) -> clip -> skip if non-finite -> AdamW -> log
               -> held-out eval / checkpoint when due -> stop on SIGTERM/SIGINT (also between
               micro-batches: train/preempt.py)
    the end    export the consolidated checkpoint, optional exact-match evaluation

Distributed details live in parallel.py, checkpoint files in checkpoint.py, logging in
metrics.py; nothing here is hidden behind callbacks.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data.alpaca import load_records
from data.loader import AlpacaLoader
from model.args import ModelArgs
from model.checkpoint import load_args, load_state_dict
from model.llama import Transformer
from model.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from train import checkpoint as ckpt
from train import parallel
from train.config import ConfigError, TrainConfig, save_config
from train.evaluate import evaluate_on_ranks
from train.faults import fault_point
from train.heldout import heldout_loss, sample_responses
from train.metrics import MetricsLogger, Throughput
from train.optim import build_optimizer, build_scheduler
from train.plan import check_fits
from train.preempt import StopRequest
from train.step import prepare_batch, train_step
from train.verify import ResumeError, clean_partial, resolve_resume

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); reported as one line, exit 1."""


def args_from_config(cfg: TrainConfig, default_vocab: int) -> ModelArgs:
    """init_from's config.json, else the preset with the config's overrides (vocab_size, unless
    pinned, is `default_vocab`). tools.plan builds its ModelArgs here too."""
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


# From scratch, a model above this size is initialised shard by shard on the devices (init_on:
# auto): a host copy per rank is 4 bytes x params x ranks per node, 224 GB for 7B on 8 GPUs.
HOST_INIT_MAX_PARAMS = 1_000_000_000


def init_on(cfg: TrainConfig, args: ModelArgs) -> str:
    if cfg.model.init_on != "auto":
        return cfg.model.init_on
    return "host" if args.num_params() <= HOST_INIT_MAX_PARAMS else "device"


def build_model(cfg: TrainConfig, args: ModelArgs, mesh, info: parallel.DistInfo) -> Transformer:
    """A sharded model on `info.device`, initialised from scratch or from `model.init_from`.

    Every path builds on the meta device first (no memory) and then draws the same random
    numbers in the same order (seed, then `init_weights`), so on one rank host and device
    initialisation give the same weights (tests/test_train_memory.py)."""
    pcfg = cfg.parallel
    with torch.device("meta"):
        model = Transformer(args)
    model.to(parallel.param_dtype(pcfg))
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


def _wrap(model: Transformer, mesh, pcfg, device: torch.device) -> None:
    parallel.apply_activation_checkpointing(model, pcfg)
    if pcfg.compile:
        parallel.apply_compile(model)
    if parallel.uses_fsdp(pcfg, mesh.size()):
        parallel.apply_fsdp(model, mesh, pcfg)
    elif model.tok_embeddings.weight.device.type != "meta":  # a meta model gets to_empty(device) next
        model.to(device)


def prepare_data(cfg: TrainConfig, info: parallel.DistInfo) -> None:
    """Synthetic tiny default: rank 0 writes the tasks and trains the tokenizer, then every rank
    points the config at them. Real data: nothing to do (paths come from the config)."""
    if getattr(cfg.data, "source", "files") != "synthetic":
        return
    from data.synthetic import build_tiny_assets

    out = Path(cfg.output_dir) / "assets"
    if info.is_main:
        build_tiny_assets(out, cfg.seed)
    dist.barrier()
    assets = build_tiny_assets(out, cfg.seed)  # cached: returns the paths rank 0 just wrote
    cfg.data = dataclasses.replace(cfg.data, paths=[assets["train"]])
    cfg.tokenizer = cfg.tokenizer or assets["tokenizer"]
    cfg.eval.heldout = cfg.eval.heldout or assets["heldout"]


def train(cfg: TrainConfig) -> dict:
    """Run training as configured; returns the last step's metrics row (rank 0) or {}."""
    info = parallel.init_distributed()
    try:
        return _train(cfg, info)
    finally:
        # ---- clean exit (issue 10): FSDP modules live in reference cycles that keep the mesh's
        # process groups alive; collect them now, not during interpreter shutdown, where a gloo
        # work object released late aborted a worker (SIGABRT) after a stop inside a step.
        gc.collect()
        dist.destroy_process_group()


def _train(cfg: TrainConfig, info: parallel.DistInfo) -> dict:
    # ------------------------------------------------------------ setup
    out_dir = Path(cfg.output_dir)
    ckpt_root = out_dir / "checkpoints"
    torch.backends.cuda.matmul.allow_tf32 = cfg.parallel.tf32
    torch.backends.cudnn.allow_tf32 = cfg.parallel.tf32
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    stop = StopRequest().install()  # SIGTERM / SIGINT: save and leave (train/preempt.py)

    prepare_data(cfg, info)
    tokenizer_path = cfg.tokenizer or (str(Path(cfg.model.init_from) / "tokenizer.model")
                                       if cfg.model.init_from else None)
    if not tokenizer_path or not Path(tokenizer_path).is_file():
        raise FileNotFoundError(f"tokenizer not found: {tokenizer_path} (set `tokenizer:` in the config)")
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except TokenizerError as e:  # neither format: one line naming the file, exit 2 (train/__main__)
        raise ConfigError(str(e)) from None
    args = model_args(cfg, tokenizer)
    # ---- resume selection (issue 10): the newest checkpoint that verifies; skipped ones named
    resume_from = resolve_resume(cfg.resume, ckpt_root, checksums=cfg.checkpoint.verify == "checksums",
                                 warn=lambda line: print(line, flush=True) if info.is_main else None)
    if info.is_main:
        save_config(cfg, out_dir / "config.yaml")
        clean_partial(ckpt_root)

    memory_gb = cfg.parallel.memory_gb or parallel.device_memory_gb(info.device)
    verdict = check_fits(cfg, args, info.world_size, memory_gb)
    if verdict and cfg.parallel.memory_check == "error":
        raise ConfigError(verdict)
    mesh = parallel.build_mesh(cfg.parallel, info)
    model = build_model(cfg, args, mesh, info)
    model.train()

    # Every rank is a data-parallel rank (sharding and replication both split the batch).
    micro, accum = cfg.batch.micro_batch_size, cfg.batch.grad_accum
    loader = AlpacaLoader(cfg.data, tokenizer, micro, info.rank, info.world_size, cfg.seed, grad_accum=accum)
    total_steps = cfg.max_steps or cfg.epochs * loader.steps_per_epoch()
    heldout_loader = None
    if cfg.eval.every > 0 and cfg.eval.heldout:
        held_cfg = dataclasses.replace(cfg.data, paths=[cfg.eval.heldout], weights=None)
        heldout_loader = AlpacaLoader(held_cfg, tokenizer, micro, info.rank, info.world_size, cfg.seed)

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)

    step, nonfinite_in_a_row = 0, 0
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizer, info)
        scheduler.load_state_dict(state["scheduler"])
        try:
            loader.load_state_dict(state["loader"])
        except ValueError as e:  # other data, or a batch split that does not fit the position
            raise ResumeError(f"resume: {resume_from}: {e}") from None
        if "rng" in state:  # absent when the checkpoint came from another world size
            ckpt.set_rng_state(state["rng"], info.device)
        step, nonfinite_in_a_row = state["step"], state["nonfinite_in_a_row"]
    logger = MetricsLogger(out_dir, info.is_main, cfg.log.tensorboard,
                           resume_step=step if resume_from is not None else None)
    logger.message(f"model {args.num_params() / 1e6:.2f}M params, world {info.world_size} "
                   f"(mesh {tuple(mesh.shape)}), global batch {micro * accum * info.world_size}, "
                   f"{total_steps} steps" + (f", resumed from {resume_from} at step {step}" if resume_from else ""))
    throughput = Throughput(args, info.device, info.world_size)
    if verdict:
        logger.message(f"warning: {verdict}")

    # ---- saving (issue 10): failures end every rank with one line, or warn (checkpoint.on_error)
    checkpointer = ckpt.Checkpointer(ckpt_root, info, cfg.checkpoint.keep, cfg.checkpoint.on_error,
                                     log=logger.message, saved_step=step if resume_from is not None else None)

    def save_state(last: bool = False, rng: dict | None = None) -> None:
        # `loader_state`, not loader.state_dict(): the loader is already past the prefetched batches.
        train_state = {"step": step, "nonfinite_in_a_row": nonfinite_in_a_row, "scheduler": scheduler.state_dict(),
                       "loader": loader_state, "rng": rng or ckpt.rng_state(info.device)}
        checkpointer.save(step, model, optimizer, train_state, last=last)

    # ------------------------------------------------------------ the loop
    batches = iter(loader)
    row: dict = {}
    loader_state = loader.state_dict()  # the position after the last *completed* step

    def next_step_batches() -> list[dict]:
        return [prepare_batch(next(batches), info.device, cfg.parallel.attention) for _ in range(accum)]

    next_batches = next_step_batches()
    while step < total_steps:
        t0 = time.perf_counter()
        # ---- stop mid-step (issue 10): the RNG where the step began, in case it is abandoned
        rng_at_step_start = ckpt.rng_state(info.device)
        micro_batches = next_batches
        lr = scheduler.get_last_lr()[0]
        result = train_step(model, optimizer, scheduler, micro_batches, cfg.parallel, cfg.optim.grad_clip,
                            stop, info.device, fault_step=step + 1)
        if result.abandoned:  # ---- stop mid-step (issue 10): save the state from before this step
            save_state(last=True, rng=rng_at_step_start)  # loader_state is still the step's start
            logger.message(f"stopped by signal ({stop.name}) in step {step + 1}, after micro-batch "
                           f"{result.abandoned} of {accum}; saved step {step}; resume with resume=auto")
            logger.close()
            return row
        step += 1
        loader_state, epoch = loader.state_dict(), loader.epoch
        if step < total_steps:  # prepared on the host while the device runs the optimizer step
            next_batches = next_step_batches()
        step_time = time.perf_counter() - t0
        if result.skipped:
            nonfinite_in_a_row += 1
            logger.message(f"step {step}: non-finite loss {result.loss} / grad norm {result.grad_norm}, step "
                           f"skipped ({nonfinite_in_a_row} in a row, max_nonfinite={cfg.max_nonfinite})")
        else:
            nonfinite_in_a_row = 0

        # ------------------------------------------------------------ logging
        seq_len = micro_batches[0]["tokens"].shape[1]
        row = {"step": step, "epoch": epoch, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
               "tokens": result.tokens, "targets": result.targets, "seq_len": seq_len,
               "attention_pairs": result.attention_pairs, "skipped": result.skipped,
               **throughput.measure(step_time, result.tokens, result.attention_pairs, total_steps - step,
                                    result.targets)}
        logger.log_step(row, total_steps, print_line=step % cfg.log.every == 0 or step in (1, total_steps))
        if nonfinite_in_a_row > cfg.max_nonfinite:
            raise TrainingError(f"stopping: {nonfinite_in_a_row} non-finite steps in a row at step {step} "
                                f"(max_nonfinite={cfg.max_nonfinite}); lower optim.lr or check the data")
        fault_point("kill", step, info.rank)  # tests only (train/faults.py)
        fault_point("term", step, info.rank)
        fault_point("int", step, info.rank)

        if heldout_loader is not None and (step % cfg.eval.every == 0 or step == total_steps):
            values = heldout_loss(model, heldout_loader, cfg.eval.max_batches, info.device, cfg.parallel.attention)
            records = load_records(cfg.eval.heldout)[: cfg.eval.samples]
            samples = sample_responses(model, tokenizer, records, cfg.data.template,
                                       cfg.eval.max_new_tokens, info.device)
            logger.log_eval(step, values, samples)

        if result.stop_votes > 0:  # SIGTERM/SIGINT (preemption): save where we are and leave cleanly
            stop.agreed()  # every rank learns which signal, for the message
            save_state(last=True)
            logger.message(f"stopped by signal at step {step} ({stop.name}); resume with resume=auto")
            logger.close()
            return row
        if cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0:
            save_state()

    # ------------------------------------------------------------ the end
    if cfg.checkpoint.export:
        final = ckpt.export(model, args, out_dir / "final", tokenizer_path,
                            EXPORT_DTYPES[cfg.checkpoint.export_dtype], info)
        logger.message(f"exported {final}")
        if cfg.eval.exact_match and cfg.eval.heldout:
            # Free the sharded model and optimizer state, then every rank evaluates its share of
            # the prompts with the exported model on its own device, in the training dtype.
            del model, optimizer, scheduler
            micro_batches = next_batches = None  # noqa: F841 (device tensors)
            parallel.release_memory(info.device)
            evaluate_on_ranks(final, tokenizer, load_records(cfg.eval.heldout), cfg.data.template,
                              cfg.eval.max_new_tokens, parallel.compute_dtype(cfg.parallel), info,
                              out_dir / "eval.json", logger.message)
    logger.close()
    return row if info.is_main else {}
