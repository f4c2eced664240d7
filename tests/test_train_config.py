"""The training config (YAML + dotted overrides), the CLI's error contract, and the schedule."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.train_helpers import ROOT
from train.config import ConfigError, load_config, save_config, to_dict
from train.optim import build_optimizer, build_scheduler

CONFIGS = ROOT / "configs"


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-5", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("max_step=10", "unknown config key 'max_step' (did you mean 'max_steps'?)"),
    ("model.n_layer=2", "unknown config key 'model.n_layer' (did you mean 'model.n_layers'?)"),
    ("data.max_lenn=64", "unknown config key 'data.max_lenn' (did you mean 'data.max_len'?)"),
    ("batch.micro_batch_size=four", "config key 'batch.micro_batch_size' must be int, got 'four'"),
    ("parallel.fsdp=ful", "config key 'parallel.fsdp' must be one of full, hybrid, none, got 'ful' "
                          "(did you mean 'full'?)"),
])
def test_a_bad_key_or_value_is_one_line_with_the_closest_key_and_exit_2(override, message):
    proc = cli("--config", str(CONFIGS / "tiny.yaml"), override)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {message}"
    assert proc.stdout == ""


def test_a_missing_config_file_or_checkpoint_is_one_line_and_exit_2(tmp_path):
    proc = cli("--config", str(tmp_path / "nope.yaml"))
    assert (proc.returncode, proc.stderr.strip()) == (2, f"error: config file not found: {tmp_path / 'nope.yaml'}")
    proc = cli("--config", str(CONFIGS / "tiny.yaml"), f"output_dir={tmp_path / 'out'}",
               f"resume={tmp_path / 'no_ckpt'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: resume: no complete checkpoint at {tmp_path / 'no_ckpt'} (expected a checkpoints/step_N dir)"]
    proc = cli("--config", str(CONFIGS / "alpaca_7b.yaml"), f"output_dir={tmp_path / 'out7b'}",
               f"model.init_from={tmp_path / 'no_llama'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no_llama" in proc.stderr


def test_yaml_values_overrides_and_the_saved_config_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "alpaca_7b.yaml", ["optim.lr=1e-5", "batch.grad_accum=8", "model.init_from=x"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-5 as a string
    assert cfg.batch.grad_accum == 8 and cfg.model.init_from == "x"
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    with pytest.raises(ConfigError, match="cannot be combined with model.init_from"):
        load_config(CONFIGS / "alpaca_7b.yaml", ["model.dim=64"])


def test_alpaca_7b_config_is_the_stanford_recipe():
    cfg = load_config(CONFIGS / "alpaca_7b.yaml")
    gpus = 8
    assert cfg.batch.micro_batch_size * cfg.batch.grad_accum * gpus == 128
    assert (cfg.batch.micro_batch_size, cfg.batch.grad_accum) == (4, 4)
    assert (cfg.optim.lr, cfg.epochs, cfg.data.max_len, cfg.optim.weight_decay) == (2e-5, 3, 512, 0.0)
    assert (cfg.optim.warmup_ratio, cfg.optim.schedule) == (0.03, "cosine")
    assert (cfg.parallel.mixed_precision, cfg.parallel.fsdp, cfg.parallel.activation_checkpointing) == \
        ("bf16", "full", "full")
    assert cfg.parallel.tf32 and cfg.max_steps is None and cfg.model.init_from
    for name in ("alpaca_13b.yaml", "llama2_7b.yaml", "tiny.yaml", "bench_1b.yaml"):
        load_config(CONFIGS / name)  # every shipped config is valid


@pytest.mark.parametrize("schedule, total, ratio", [("cosine", 1218, 0.03), ("linear", 50, 0.1),
                                                     ("cosine", 10, 0.0)])
def test_schedule_matches_the_hf_trainer_stanford_used(schedule, total, ratio):
    """Oracle: transformers' own schedule functions, stepped the same way."""
    import math

    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    from train.config import OptimConfig

    def lrs(make):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=2e-5)
        sched = make(opt)
        out = []
        for _ in range(total):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    warm = math.ceil(ratio * total)
    hf = get_cosine_schedule_with_warmup if schedule == "cosine" else get_linear_schedule_with_warmup
    cfg = OptimConfig(lr=2e-5, warmup_ratio=ratio, schedule=schedule)
    ours = lrs(lambda opt: build_scheduler(opt, cfg, total))
    theirs = lrs(lambda opt: hf(opt, warm, total))
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)


def test_adamw_gets_the_configured_hyperparameters():
    from train.config import OptimConfig

    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, betas=[0.8, 0.9], eps=1e-6))
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (g["lr"], g["weight_decay"], g["betas"], g["eps"]) == (1e-3, 0.1, (0.8, 0.9), 1e-6)


def test_unknown_preset_is_a_config_error(tmp_path):
    proc = cli("--config", str(CONFIGS / "tiny.yaml"), f"output_dir={tmp_path}", "model.preset=debugg")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: model: unknown model preset 'debugg' (did you mean 'debug'?)"]

