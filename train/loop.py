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
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from data.alpaca import IGNORE_INDEX, load_records
from data.loader import AlpacaLoader
from model.args import ModelArgs
from model.checkpoint import load_args, load_state_dict
from model.llama import Transformer
from model.tokenizer import Tokenizer
from train import checkpoint as ckpt
from train import parallel
from train.config import ConfigError, TrainConfig, save_config
from train.faults import fault_point
from train.heldout import heldout_loss, sample_responses
from train.metrics import MetricsLogger, Throughput
from train.optim import build_optimizer, build_scheduler
from train.preempt import StopRequest

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); reported as one line, exit 1."""


def model_args(cfg: TrainConfig, tokenizer: Tokenizer) -> ModelArgs:
    """init_from's config.json, else the preset with overrides; vocab from the tokenizer unless pinned."""
    if cfg.model.init_from:
        args = load_args(cfg.model.init_from)
    else:
        fields = dict(cfg.model.args)
        fields.setdefault("vocab_size", tokenizer.vocab_size)
        try:
            args = ModelArgs.preset(cfg.model.preset, **fields) if cfg.model.preset else ModelArgs.from_dict(fields)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
    if tokenizer.vocab_size > args.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, "
                         f"the model only {args.vocab_size} embeddings")
    return args


def build_model(cfg: TrainConfig, args: ModelArgs, mesh, info: parallel.DistInfo) -> Transformer:
    """A sharded model on `info.device`, initialised from scratch or from `model.init_from`."""
    pcfg = cfg.parallel
    if cfg.model.init_from or cfg.model.init_on == "device":
        # Build on the meta device (no memory), shard, allocate only this rank's shards, then
        # fill them: from the checkpoint rank 0 reads, or with a fresh init of each shard.
        with torch.device("meta"):
            model = Transformer(args)
        model.to(parallel.param_dtype(pcfg))
        _wrap(model, mesh, pcfg)
        model.to_empty(device=info.device)
        if cfg.model.init_from:
            full = load_state_dict(cfg.model.init_from) if info.is_main else {}
            ckpt.load_pretrained(model, full)
            del full
        else:
            torch.manual_seed(cfg.seed)
            model.init_weights()  # on DTensor shards
    else:
        # From scratch: the full model is initialised on the host with the run's seed, so the
        # weights do not depend on the world size (that is what makes world 1 == world 2 testable);
        # fully_shard then keeps only this rank's shard and moves it to the device.
        torch.manual_seed(cfg.seed)
        model = Transformer(args)
        model.init_weights()
        model.to(parallel.param_dtype(pcfg))
        _wrap(model, mesh, pcfg)
    return model


def _wrap(model: Transformer, mesh, pcfg) -> None:
    parallel.apply_activation_checkpointing(model, pcfg)
    if pcfg.compile:
        parallel.apply_compile(model)
    parallel.apply_fsdp(model, mesh, pcfg)


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


def real_tokens(batch: dict) -> int:
    """Non-padding input tokens (the loader counts them; rows are right-padded and end with a
    target, so 1 + the index of a row's last target is the fallback)."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    labels = batch["labels"]
    has = labels != IGNORE_INDEX  # (B, T)
    idx = torch.arange(labels.shape[1]).expand_as(labels)
    return int(torch.where(has, idx + 1, 0).amax(dim=1).sum())


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
    tokenizer = Tokenizer(tokenizer_path)
    args = model_args(cfg, tokenizer)
    # ---- resume selection (issue 10): the newest checkpoint that verifies; skipped ones named
    resume_from = ckpt.resolve_resume(cfg.resume, ckpt_root, checksums=cfg.checkpoint.verify == "checksums",
                                      warn=lambda line: print(line, flush=True) if info.is_main else None)
    if info.is_main:
        save_config(cfg, out_dir / "config.yaml")
        ckpt.clean_partial(ckpt_root)

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
            raise ckpt.ResumeError(f"resume: {resume_from}: {e}") from None
        if "rng" in state:  # absent when the checkpoint came from another world size
            ckpt.set_rng_state(state["rng"], info.device)
        step, nonfinite_in_a_row = state["step"], state["nonfinite_in_a_row"]
    logger = MetricsLogger(out_dir, info.is_main, cfg.log.tensorboard,
                           resume_step=step if resume_from is not None else None)
    logger.message(f"model {args.num_params() / 1e6:.2f}M params, world {info.world_size} "
                   f"(mesh {tuple(mesh.shape)}), global batch {micro * accum * info.world_size}, "
                   f"{total_steps} steps" + (f", resumed from {resume_from} at step {step}" if resume_from else ""))
    throughput = Throughput(args, info.device, info.world_size)

    # ---- saving (issue 10): failures end every rank with one line, or warn (checkpoint.on_error)
    checkpointer = ckpt.Checkpointer(ckpt_root, info, cfg.checkpoint.keep, cfg.checkpoint.on_error,
                                     log=logger.message, saved_step=step if resume_from is not None else None)

    def save_state(last: bool = False, loader_state: dict | None = None, rng: dict | None = None) -> None:
        train_state = {"step": step, "nonfinite_in_a_row": nonfinite_in_a_row, "scheduler": scheduler.state_dict(),
                       "loader": loader_state or loader.state_dict(), "rng": rng or ckpt.rng_state(info.device)}
        checkpointer.save(step, model, optimizer, train_state, last=last)

    # ------------------------------------------------------------ the loop
    batches = iter(loader)
    row: dict = {}
    dp_world = info.world_size
    while step < total_steps:
        t0 = time.perf_counter()
        # ---- stop mid-step (issue 10): where the step began, in case it is abandoned
        loader_at_step_start, rng_at_step_start = loader.state_dict(), ckpt.rng_state(info.device)
        micro_batches = [next(batches) for _ in range(accum)]
        # The step's loss is sum(token CE) / (targets in the whole step, all ranks): count first.
        local_targets = sum(b["num_targets"] for b in micro_batches)
        local_tokens = sum(real_tokens(b) for b in micro_batches)
        step_targets, step_tokens = parallel.all_reduce_sum([local_targets, local_tokens], info.device)

        loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
        for i, b in enumerate(micro_batches):
            # Reduce-scatter gradients only once, after the last micro-batch has added its share.
            model.set_requires_gradient_sync(i == accum - 1)
            tokens, labels = b["tokens"].to(info.device), b["labels"].to(info.device)
            positions = None if b["positions"] is None else b["positions"].to(info.device)
            doc_ids = None if b["document_ids"] is None else b["document_ids"].to(info.device)
            logits = model(tokens, positions, doc_ids)  # (B, T, vocab), compute dtype
            token_loss_sum = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
            # FSDP averages gradients over the dp_world ranks; scaling by dp_world turns that
            # average back into the sum, so the gradient is exactly d(total / step_targets).
            (token_loss_sum * (dp_world / max(step_targets, 1.0))).backward()
            loss_sum += token_loss_sum.detach().double()
            del logits
            # ---- stop mid-step (issue 10): a signal ends the step after the micro-batch in flight;
            # the partial gradients are dropped and the state before this step is saved.
            if i == 0:  # tests only (train/faults.py)
                fault_point("term_mid", step + 1, info.rank)
                fault_point("int_mid", step + 1, info.rank)
            if i < accum - 1 and stop.agreed(info.device):
                optimizer.zero_grad(set_to_none=True)
                save_state(last=True, loader_state=loader_at_step_start, rng=rng_at_step_start)
                logger.message(f"stopped by signal ({stop.name}) in step {step + 1}, after micro-batch {i + 1} "
                               f"of {accum}; saved step {step}; resume with resume=auto")
                logger.close()
                return row

        # One collective agrees on the step's loss and on whether any rank was told to stop.
        total_loss, stop_votes = parallel.all_reduce_sum([float(loss_sum), float(stop.requested)], info.device)
        loss = total_loss / max(step_targets, 1.0)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        lr = scheduler.get_last_lr()[0]

        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            # Leave weights, optimizer moments and the schedule untouched; the data moves on.
            nonfinite_in_a_row += 1
            logger.message(f"step {step + 1}: non-finite loss {loss} / grad norm {grad_norm}, step skipped "
                           f"({nonfinite_in_a_row} in a row, max_nonfinite={cfg.max_nonfinite})")
        else:
            nonfinite_in_a_row = 0
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        step_time = time.perf_counter() - t0

        # ------------------------------------------------------------ logging
        seq_len = micro_batches[0]["tokens"].shape[1]
        row = {"step": step, "epoch": loader.epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "tokens": int(step_tokens), "targets": int(step_targets), "seq_len": seq_len, "skipped": skipped,
               **throughput.measure(step_time, step_tokens, seq_len, total_steps - step)}
        logger.log_step(row, total_steps, print_line=step % cfg.log.every == 0 or step in (1, total_steps))
        if nonfinite_in_a_row > cfg.max_nonfinite:
            raise TrainingError(f"stopping: {nonfinite_in_a_row} non-finite steps in a row at step {step} "
                                f"(max_nonfinite={cfg.max_nonfinite}); lower optim.lr or check the data")
        fault_point("kill", step, info.rank)  # tests only (train/faults.py)
        fault_point("term", step, info.rank)
        fault_point("int", step, info.rank)

        if heldout_loader is not None and (step % cfg.eval.every == 0 or step == total_steps):
            values = heldout_loss(model, heldout_loader, cfg.eval.max_batches, info.device)
            records = load_records(cfg.eval.heldout)[: cfg.eval.samples]
            samples = sample_responses(model, tokenizer, records, cfg.data.template,
                                       cfg.eval.max_new_tokens, info.device)
            logger.log_eval(step, values, samples)

        if stop_votes > 0:  # SIGTERM/SIGINT (preemption): save where we are and leave cleanly
            stop.agreed(info.device)  # every rank learns which signal, for the message
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
        if cfg.eval.exact_match and cfg.eval.heldout and info.is_main:
            evaluate_export(cfg, final, tokenizer, out_dir)
        dist.barrier()
    logger.close()
    return row if info.is_main else {}


def evaluate_export(cfg: TrainConfig, final: Path, tokenizer: Tokenizer, out_dir: Path) -> None:
    """Greedy exact match (KV cache) of the exported checkpoint on the held-out prompts: the
    artefact users will chat with is the one that is measured."""
    from model.checkpoint import load_model
    from train.evaluate import exact_match, format_result, load_records

    model = load_model(final)
    records = load_records(cfg.eval.heldout)
    acc = exact_match(model, tokenizer, records, template=cfg.data.template,
                      max_new_tokens=cfg.eval.max_new_tokens)
    print(format_result(acc, len(records)), flush=True)
    tmp = out_dir / "eval.json.tmp"
    tmp.write_text(json.dumps({"exact_match": acc, "n": len(records)}) + "\n")
    os.replace(tmp, out_dir / "eval.json")
