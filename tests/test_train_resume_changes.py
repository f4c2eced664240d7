"""Resume says what it does: the config's deliberate changes (lr, length, schedule) apply from the
resumed step and are recorded; changes that would alter what the saved state means are refused
in one line; a fresh run never writes over an earlier one unasked; overrides that cannot apply
are refused."""

from __future__ import annotations

import math
import shutil

import pytest
import yaml
from train_helpers import ROOT, check, rows, run_train, tiny_assets, tiny_config

from train.optim import lr_factor, warmup_steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_changes")
    assets = tiny_assets(root / "assets")
    return tiny_config(root / "cfg.yaml", assets, root / "cache"), root


def _trained_to(setup, name: str, steps: int = 8):
    """A run of `steps` steps with a checkpoint at step 4, the later checkpoints removed."""
    cfg, root = setup
    out = root / name
    check(run_train(cfg, out, overrides=[f"max_steps={steps}"]))
    for p in (out / "checkpoints").glob("step_*"):
        if p.name != "step_4":
            shutil.rmtree(p)
    return cfg, out


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_a_changed_lr_is_applied_from_the_resumed_step_and_recorded(setup):
    cfg, out = _trained_to(setup, "lr")
    proc = check(run_train(cfg, out, overrides=["max_steps=8", "resume=auto", "optim.lr=1e-3", "overwrite=true"]))
    assert "optim.lr changed from 0.003 to 0.001, applied from step 5" in proc.stdout
    by_step = {r["step"]: r for r in rows(out)}
    warm = warmup_steps(8, 0.25)
    for step in range(5, 9):  # the update of step s uses factor(s - 1) of the new peak
        assert by_step[step]["lr"] == pytest.approx(1e-3 * lr_factor(step - 1, 8, warm, "cosine"), rel=1e-12)
    assert by_step[4]["lr"] == pytest.approx(3e-3 * lr_factor(3, 8, warm, "cosine"), rel=1e-12)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 1e-3
    assert saved["changes"] == [{"step": 4, "optim.lr": 1e-3}]


def test_an_extended_run_follows_the_new_schedule_without_an_lr_0_step(setup):
    cfg, out = _trained_to(setup, "extend", steps=4)
    shutil.rmtree(out / "final")
    proc = check(run_train(cfg, out, overrides=["max_steps=12", "resume=auto"]))
    assert "max_steps changed from 4 to 12, applied from step 5" in proc.stdout
    r = {row["step"]: row for row in rows(out)}
    assert sorted(r) == list(range(1, 13))
    warm = warmup_steps(12, 0.25)  # 3 warmup steps under the new total
    for step in range(5, 13):
        want = 3e-3 * lr_factor(step - 1, 12, warm, "cosine")
        assert r[step]["lr"] == pytest.approx(want, rel=1e-12) and want > 0
    # Cosine from step 5: 3e-3 * 0.5 * (1 + cos(pi * (4 - 3) / 9)) by hand.
    assert r[5]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi / 9)), rel=1e-12)


def test_a_change_to_what_the_state_means_is_refused_in_one_line(setup):
    cfg, out = _trained_to(setup, "refused")
    line = _one_error_line(run_train(cfg, out, overrides=["max_steps=8", "resume=auto", "batch.micro_batch_size=2",
                                                          "seed=3"]))
    assert "global batch (micro_batch_size x grad_accum x ranks) (4, now 2)" in line
    assert "seed (0, now 3)" in line and "new output_dir" in line


def test_a_fresh_run_does_not_overwrite_a_finished_one(setup):
    cfg, root = setup
    out = root / "fresh"
    check(run_train(cfg, out, overrides=["max_steps=2", "checkpoint.every=0"]))
    before = (out / "final" / "manifest.json").read_bytes()
    line = _one_error_line(run_train(cfg, out, overrides=["max_steps=2", "checkpoint.every=0"]))
    assert f"output_dir {out} already holds a run (final, metrics.jsonl)" in line and "overwrite=true" in line
    assert (out / "final" / "manifest.json").read_bytes() == before
    check(run_train(cfg, out, overrides=["max_steps=2", "checkpoint.every=0", "overwrite=true"]))


def test_a_max_len_beyond_the_model_is_refused(setup):
    cfg, root = setup
    line = _one_error_line(run_train(cfg, root / "never", overrides=["data.max_len=512"]))
    assert "data.max_len=512 is longer than the model's max_seq_len=128" in line


def test_the_7b_recipe_without_converted_weights_names_the_convert_command(tmp_path):
    line = _one_error_line(run_train(ROOT / "configs" / "alpaca_7b.yaml", tmp_path / "run",
                                     overrides=["model.init_from=/nonexistent/llama-7b"]))
    assert "python -m tools.convert hf|meta SOURCE_DIR /nonexistent/llama-7b" in line


def test_data_paths_under_the_synthetic_source_are_refused(tmp_path):
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.paths cannot apply with data.source=synthetic"):
        load_config("configs/tiny.yaml", ["data.paths=[nope.json]"])
