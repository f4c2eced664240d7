"""The operations around the training loop: output directory, resume, what changed since the
checkpoint, the preemption vote, RNG snapshots, checkpoint cadence and fault injection.

The loop (train/loop.py) calls a `Run` at named points and never sees these details:

    run = Run(cfg, info)                   output dir checked, signals caught, resume chosen
    run.restore(model, opt, sched, loader) the checkpoint's state, the config's changes applied
    run.interruptible(step_batches)        a stop signal ends the step after the micro-batch in flight
    run.step_done(step, loader, result)    bookkeeping of a finished step (non-finite count, faults)
    run.save_due(model, opt)               a periodic checkpoint of the last finished step (maybe asynchronous)
    run.after_log(step)                    a finished background save committed; a failed save's error raised
    run.stop_agreed()                      every rank votes on a stop signal (save and leave)
    run.finish_saves()                     the end: the save in flight (if any) committed

Why a stop can come between micro-batches: with gradient accumulation a 7B step takes long, and
the cluster's grace period is short (train/preempt.py). The partial gradients are dropped and
the state from before the step is saved, so resuming redoes the step exactly.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from train import checkpoint as ckpt
from train.build import base_identity
from train.checkpointer import Checkpointer
from train.config import ConfigError, TrainConfig, resume_changes, save_config, to_dict
from train.distributed import DistInfo, rank
from train.faults import fault_point
from train.metrics import MetricsLogger
from train.optim import set_schedule
from train.preempt import StopRequest
from train.step import StepBatches, StepResult
from train.verify import ResumeError, clean_partial, resolve_resume

RUN_FILES = ("final", "metrics.jsonl", "tb", "eval.json", "checkpoints")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); reported as one line, exit 1."""


class StepInterrupted(Exception):
    """A stop signal was agreed after `done` micro-batches of a step; nothing was updated."""

    def __init__(self, done: int):
        super().__init__(f"stopped after micro-batch {done}")
        self.done = done


class Run:
    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.out_dir = Path(cfg.output_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.stop = StopRequest().install()  # SIGTERM / SIGINT: save and leave (train/preempt.py)
        self.resume_from = resolve_resume(cfg.resume, self.ckpt_root, checksums=cfg.checkpoint.verify == "checksums",
                                          warn=lambda line: print(line, flush=True) if info.is_main else None)
        if self.resume_from is None:
            self._fresh_output_dir()
        self.base = base_identity(cfg)  # a LoRA run's frozen base (path, manifest hash); None otherwise
        self.step, self.nonfinite_in_a_row = 0, 0
        self.loader_state: dict = {}
        self.rng_at_step_start: dict | None = None
        self.stopped = False  # by a signal: the run ends without its export
        self.logger: MetricsLogger | None = None
        self.checkpointer: Checkpointer | None = None
        self.save_error: ckpt.SaveError | None = None  # a periodic save's failure, raised once its step is logged

    def _fresh_output_dir(self) -> None:
        """A new run never writes over an earlier one's results without being asked."""
        old = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if old and not self.cfg.overwrite:
            raise ConfigError(f"output_dir {self.out_dir} already holds a run ({', '.join(old)}): "
                              "resume=auto continues it, overwrite=true replaces it, or choose another output_dir")
        if old and self.info.is_main:
            for name in old:
                path = self.out_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    # ---------------------------------------------------------------- start
    def restore(self, model, optimizer, scheduler, loader) -> MetricsLogger:
        """Load the checkpoint (if resuming), apply the config's allowed changes, write config.yaml,
        and open the metrics log. Returns the logger."""
        cfg, info = self.cfg, self.info
        changed: dict = {}
        if self.resume_from is not None:
            state = ckpt.load(self.resume_from, model, optimizer, info)
            self._check_base(state.get("base"))
            if "config" in state:
                changed = self._check_changes(state["config"], state["world_size"])
                cfg.changes = list(state["config"].get("changes", [])) + (
                    [{"step": state["step"], **{k: v[1] for k, v in changed.items()}}] if changed else [])
            try:
                loader.load_state_dict(state["loader"])
            except ValueError as e:  # other data, or a batch split that does not fit the position
                raise ResumeError(f"resume: {self.resume_from}: {e}") from None
            if "rng" in state:  # absent when the checkpoint came from another world size
                ckpt.set_rng_state(state["rng"], info.device)
            self.step, self.nonfinite_in_a_row = state["step"], state["nonfinite_in_a_row"]
        # The schedule always follows this run's config at the resumed step (a new lr, a longer run).
        set_schedule(optimizer, scheduler, cfg.optim, self.step)
        self.loader_state = loader.state_dict()
        if info.is_main:
            save_config(cfg, self.out_dir / "config.yaml")
            clean_partial(self.ckpt_root)
        resumed = self.resume_from is not None
        self.logger = MetricsLogger(self.out_dir, info.is_main, cfg.log.tensorboard,
                                    resume_step=self.step if resumed else None)
        for key, (old, new) in changed.items():
            self.logger.message(f"resume: {key} changed from {old} to {new}, applied from step {self.step + 1}")
        asynchronous = cfg.checkpoint.async_save
        if asynchronous == "auto":
            asynchronous = info.device.type == "cuda"
        self.checkpointer = Checkpointer(self.ckpt_root, info, cfg.checkpoint.keep, cfg.checkpoint.on_error,
                                         log=self.logger.message, saved_step=self.step if resumed else None,
                                         asynchronous=asynchronous and cfg.checkpoint.every > 0)
        return self.logger

    def _check_base(self, saved: dict | None) -> None:
        """LoRA adapters mean something only on the weights they were trained on."""
        now = self.base
        if saved != now and (saved or now):
            def say(b):
                return "no frozen base (full fine-tuning)" if b is None else f"{b['path']} (manifest sha256 {b['manifest_sha256']})"
            raise ConfigError(f"resume: {self.resume_from} holds adapters for the base {say(saved)}, but this run's "
                              f"base is {say(now)}; resume onto the same base, or start a new output_dir")

    def _check_changes(self, saved: dict, saved_world: int) -> dict:
        refused, applied = resume_changes(saved, to_dict(self.cfg))
        # Another split of the same global batch (8 GPUs x accumulation 4 -> 4 x 8) resumes the same
        # run; another global batch would not see the examples the saved position promises.
        batch = self.cfg.batch
        old = saved["batch"]["micro_batch_size"] * saved["batch"]["grad_accum"] * saved_world
        new = batch.micro_batch_size * batch.grad_accum * self.info.world_size
        if old != new:
            refused["global batch (micro_batch_size x grad_accum x ranks)"] = (old, new)
        if refused:
            raise ConfigError(f"resume: {self.resume_from} was trained with other " + "; ".join(
                f"{k} ({old!r}, now {new!r})" for k, (old, new) in refused.items()) +
                ": these change what the saved state means; start a new output_dir instead")
        return applied

    # ---------------------------------------------------------------- each step
    def interruptible(self, batches: StepBatches) -> StepBatches:
        """`batches` whose iteration votes on a stop signal after each micro-batch but the last
        (a host-side collective: no device sync) and raises StepInterrupted when one is agreed."""
        self.rng_at_step_start = ckpt.rng_state(self.info.device)
        return _Interruptible(batches.micro, batches.num_targets, batches.num_tokens, batches.attention_pairs,
                              run=self)

    def step_done(self, step: int, loader, result: StepResult) -> None:
        self.step, self.loader_state = step, loader.state_dict()
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if result.skipped else 0
        if result.skipped:
            self.logger.message(f"step {step}: non-finite loss {result.loss} / grad norm {result.grad_norm}, step "
                                f"skipped ({self.nonfinite_in_a_row} in a row, max_nonfinite={self.cfg.max_nonfinite})")

    def after_log(self, step: int) -> None:
        if self.save_error is not None:
            raise self.save_error
        self.checkpointer.poll()  # collective: every rank reaches it after every step
        if self.nonfinite_in_a_row > self.cfg.max_nonfinite:
            raise TrainingError(f"stopping: {self.nonfinite_in_a_row} non-finite steps in a row at step {step} "
                                f"(max_nonfinite={self.cfg.max_nonfinite}); lower optim.lr or check the data")
        for kind in ("kill", "term", "int"):  # tests only (train/faults.py)
            fault_point(kind, step, self.info.rank)

    def stop_agreed(self) -> bool:
        return self.stop.agreed()

    def checkpoint_due(self, step: int) -> bool:
        return self.cfg.checkpoint.every > 0 and step % self.cfg.checkpoint.every == 0

    # ---------------------------------------------------------------- saving
    def save_due(self, model, optimizer) -> float:
        """The periodic save of this step; returns the seconds the loop was blocked (waiting for the
        previous background write, staging or writing). A failure that stops the run is raised by
        `after_log`, so the step's metrics row is still written first."""
        t0 = time.perf_counter()
        try:
            self.save(model, optimizer)
        except ckpt.SaveError as e:
            self.save_error = e
        return time.perf_counter() - t0

    def finish_saves(self) -> None:
        """The save in flight (if any) committed: before the export, and before a run ends."""
        self.checkpointer.finish()

    def save(self, model, optimizer, last: bool = False, rng: dict | None = None) -> None:
        """A checkpoint of the last finished step (its loader position, not the prefetched one)."""
        train_state = {"step": self.step, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                       "loader": self.loader_state,
                       "rng": rng or ckpt.rng_state(self.info.device), "config": to_dict(self.cfg),
                       "base": self.base}
        self.checkpointer.save(self.step, model, optimizer, train_state, last=last)

    def save_stopped(self, model, optimizer, interrupted: StepInterrupted | None = None) -> None:
        """Save and say how to go on, after a stop signal: at the end of a step, or inside one
        (its partial gradients dropped, the RNG and loader as the step began)."""
        self.stopped = True
        if interrupted is None:
            self.save(model, optimizer, last=True)
            self.logger.message(f"stopped by signal at step {self.step} ({self.stop.name}); resume with resume=auto")
        else:
            optimizer.zero_grad(set_to_none=True)
            self.save(model, optimizer, last=True, rng=self.rng_at_step_start)
            self.logger.message(f"stopped by signal ({self.stop.name}) in step {self.step + 1}, after micro-batch "
                                f"{interrupted.done} of {self.cfg.batch.grad_accum}; saved step {self.step}; "
                                "resume with resume=auto")


class _Interruptible(StepBatches):
    def __init__(self, micro, num_targets, num_tokens, attention_pairs, run: Run):
        super().__init__(micro, num_targets, num_tokens, attention_pairs)
        self.run = run

    def __iter__(self) -> Iterator:
        for i, mb in enumerate(self.micro):
            yield mb
            if i == 0:  # tests only (train/faults.py)
                fault_point("term_mid", self.run.step + 1, rank())
                fault_point("int_mid", self.run.step + 1, rank())
            if i < len(self.micro) - 1 and self.run.stop.agreed():
                raise StepInterrupted(i + 1)

