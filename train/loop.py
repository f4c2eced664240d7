"""The training loop, read top to bottom.

    setup      inputs (data, tokenizer, model shape) -> loader -> model (FSDP2), AdamW, schedule
               -> the run's state restored when resuming (train/run.py)
    each step  grad_accum micro-batches -> loss summed over tokens / targets of the whole step
               (all micro-batches, all ranks) -> clip -> skip if non-finite -> AdamW (train/step.py)
               -> checkpoint when due (maybe written in the background) -> log -> held-out eval
               -> stop on SIGTERM/SIGINT
    the end    export the consolidated checkpoint, optional exact-match evaluation

The research is here and in train/step.py; resume, preemption, checkpoint cadence and fault
injection live in train/run.py and are called at named points; how the model is built and
wrapped is train/build.py and train/parallel.py.
"""

from __future__ import annotations

import dataclasses
import gc
import time

import torch
import torch.distributed as dist

from data.alpaca import load_records
from data.loader import AlpacaLoader
from train import checkpoint as ckpt
from train import parallel
from train.build import adapter_info, build_training, resolve_inputs
from train.checkpoint_async import drain_all
from train.config import ConfigError, TrainConfig
from train.distributed import DistInfo, init_distributed
from train.evaluate import evaluate_on_ranks
from train.heldout import heldout_loss, sample_responses
from train.metrics import Throughput
from train.plan import check_fits
from train.run import Run, StepInterrupted
from train.step import step_batches, train_step

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def train(cfg: TrainConfig) -> dict:
    """Run training as configured; returns the last step's metrics row (rank 0) or {}."""
    info = init_distributed()
    try:
        return _train(cfg, info)
    finally:
        # FSDP modules live in reference cycles that keep the mesh's process groups alive; collect
        # them now, not during interpreter shutdown, where a late gloo teardown aborted a worker.
        drain_all()
        gc.collect()
        dist.destroy_process_group()


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    # ------------------------------------------------------------ setup
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.parallel.tf32
    run = Run(cfg, info)
    inputs = resolve_inputs(cfg, info)
    verdict = check_fits(cfg, inputs.args, info.world_size,
                         cfg.parallel.memory_gb or parallel.device_memory_gb(info.device))
    if verdict and cfg.parallel.memory_check == "error":
        raise ConfigError(verdict)
    micro, accum = cfg.batch.micro_batch_size, cfg.batch.grad_accum
    loader = AlpacaLoader(inputs.data, inputs.tokenizer, micro, info.rank, info.world_size, cfg.seed, grad_accum=accum)
    total_steps = cfg.max_steps or cfg.epochs * loader.steps_per_epoch()
    model, optimizer, scheduler = build_training(cfg, inputs.args, info, total_steps)
    log = run.restore(model, optimizer, scheduler, loader)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.message(f"model {inputs.args.num_params() / 1e6:.2f}M params"
                + (f" ({trainable / 1e6:.3f}M trainable: LoRA adapters)" if cfg.lora else "")
                + f", world {info.world_size} (mesh "
                f"{parallel.mesh_shape(cfg.parallel, info)}), global batch "
                f"{micro * accum * info.world_size}, {total_steps} steps"
                + (f", resumed from {run.resume_from} at step {run.step}" if run.resume_from else ""))
    if verdict:
        log.message(f"warning: {verdict}")
    heldout, heldout_records = None, load_records(inputs.heldout) if inputs.heldout else []
    if cfg.eval.every > 0 and inputs.heldout:
        held_data = dataclasses.replace(inputs.data, paths=[inputs.heldout], weights=None)
        heldout = AlpacaLoader(held_data, inputs.tokenizer, micro, info.rank, info.world_size, cfg.seed)
    throughput = Throughput(inputs.args, info.device, info.world_size)
    steps = step_batches(loader, accum, info.device, cfg.parallel.attention)

    # ------------------------------------------------------------ the loop
    batches, row = next(steps), {}
    for step in range(run.step + 1, total_steps + 1):
        t0 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        try:
            result = train_step(model, optimizer, scheduler, run.interruptible(batches), cfg.optim.grad_clip)
        except StepInterrupted as stopped:  # a stop signal inside the step: nothing was updated
            run.save_stopped(model, optimizer, stopped)
            break
        run.step_done(step, loader, result)
        epoch, seq_len = loader.epoch, batches.micro[0].tokens.shape[1]
        if step < total_steps:
            batches = next(steps)  # prepared on the host while the device runs the optimizer step
        row = {"step": step, "epoch": epoch, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
               "tokens": result.tokens, "targets": result.targets, "seq_len": seq_len,
               "attention_pairs": result.attention_pairs, "skipped": result.skipped,
               **throughput.measure(time.perf_counter() - t0, result.tokens, result.attention_pairs,
                                    total_steps - step, result.targets)}
        if run.checkpoint_due(step):  # before the row is logged, so that the row says what the save cost
            row["checkpoint_blocked_s"] = round(run.save_due(model, optimizer), 4)
        log.log_step(row, total_steps, print_line=step % cfg.log.every == 0 or step in (1, total_steps))
        run.after_log(step)

        if heldout is not None and (step % cfg.eval.every == 0 or step == total_steps):
            values = heldout_loss(model, heldout, cfg.eval.max_batches, info.device, cfg.parallel.attention)
            samples = sample_responses(model, inputs.tokenizer, heldout_records[: cfg.eval.samples],
                                       cfg.data.template, cfg.eval.max_new_tokens,
                                       parallel.compute_dtype(cfg.parallel))
            log.log_eval(step, values, samples)
        if run.stop_agreed():  # SIGTERM/SIGINT (preemption): save where we are and leave cleanly
            run.save_stopped(model, optimizer)
            break

    # ------------------------------------------------------------ the end
    run.finish_saves()
    if not run.stopped and cfg.checkpoint.export:
        final = ckpt.export(model, inputs.args, run.out_dir / "final", inputs.tokenizer_path,
                            EXPORT_DTYPES[cfg.checkpoint.export_dtype], info, adapter_info(cfg))
        log.message(f"exported {final}")
        # Free the sharded model and optimizer state: evaluation loads the exported model, on each
        # rank's own device, in the training dtype.
        del model, optimizer, scheduler, batches, steps
        parallel.release_memory(info.device)
        if cfg.eval.exact_match and inputs.heldout:  # every rank takes its share of the prompts
            evaluate_on_ranks(final, inputs.tokenizer, heldout_records, cfg.data.template,
                              cfg.eval.max_new_tokens, parallel.compute_dtype(cfg.parallel), info,
                              run.out_dir / "eval.json", log.message)
        if cfg.eval.ifeval and info.is_main:
            from evaluation.suite import run_ifeval

            dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}[parallel.compute_dtype(cfg.parallel)]
            report = run_ifeval(str(final), cfg.eval.ifeval, run.out_dir / "eval",
                                ["--device", str(info.device), "--dtype", dtype])
            if report is not None:
                log.message(f"IFEval prompt-level strict accuracy: {report['prompt_level_strict_acc']:.4f}")
    log.close()
    return row if info.is_main else {}
