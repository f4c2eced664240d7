"""LoRA and QLoRA through the training loop, on 1 and 2 gloo processes: every test compares a
run with an independent one (another world size, an uninterrupted run, the base checkpoint)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.train_helpers import ROOT, check, rows, run_train, tiny_assets, tiny_config

pytestmark = pytest.mark.slow
SHARED = ROOT.parent / "shared" / "data"
LORA = "lora={rank: 4, alpha: 8, dropout: 0.0, targets: [wq, wv, w2]}"


def write_base(out: Path, tokenizer: str, vocab: int, dim: int = 64, seed: int = 1) -> Path:
    """A random LLaMA saved as a project checkpoint: the frozen base the adapters train on."""
    from model.args import ModelArgs
    from model.checkpoint import save_checkpoint
    from model.llama import Transformer

    torch.manual_seed(seed)
    args = ModelArgs.preset("debug", dim=dim, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, vocab_size=vocab)
    model = Transformer(args)
    model.init_weights()
    return save_checkpoint(model.state_dict(), args, out, tokenizer_path=tokenizer)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    assets = tiny_assets(tmp / "assets")
    cfg = yaml.safe_load(tiny_config(tmp / "tiny.yaml", assets, tmp / "cache").read_text())
    from model.tokenizer import load_tokenizer

    base = write_base(tmp / "base", assets["tokenizer"], load_tokenizer(assets["tokenizer"]).vocab_size)
    cfg["model"] = {"init_from": str(base)}
    del cfg["tokenizer"]
    (tmp / "lora.yaml").write_text(yaml.safe_dump(cfg))
    return tmp, base, tmp / "lora.yaml"


@pytest.fixture(scope="module")
def straight_w2(setup):
    tmp, _, cfg = setup
    out = tmp / "straight_w2"
    check(run_train(cfg, out, nproc=2, overrides=[LORA, "batch.micro_batch_size=2"]))
    return out


def adapters(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "final" / "adapter.safetensors")


def test_one_and_two_ranks_train_the_same_adapters(setup, straight_w2):
    tmp, _, cfg = setup
    w1 = tmp / "w1"
    check(run_train(cfg, w1, nproc=1, overrides=[LORA]))
    r1, r2 = rows(w1), rows(straight_w2)
    assert len(r1) == len(r2) == 8
    for a, b in zip(r1, r2, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
    a1, a2 = adapters(w1), adapters(straight_w2)
    assert a1.keys() == a2.keys() and len(a1) == 2 * 3 * 2  # A and B for 3 targets in 2 layers
    for k in a1:
        torch.testing.assert_close(a1[k], a2[k], rtol=1e-5, atol=2e-5, msg=k)
    assert any(a1[k].abs().max() > 0 for k in a1 if "lora_b" in k)  # the adapters did train


def test_checkpoint_holds_only_adapters_and_the_export_is_the_base_plus_BA(setup, straight_w2):
    import torch.distributed.checkpoint as dcp

    from model.checkpoint import load_state_dict

    _, base_dir, _ = setup
    meta = dcp.FileSystemReader(str(straight_w2 / "checkpoints" / "step_8")).read_metadata()
    model_keys = [k for k in meta.state_dict_metadata if k.startswith("model.")]
    optim_keys = [k for k in meta.state_dict_metadata if k.startswith("optim.state.")]
    assert model_keys and all(".lora_a." in k or ".lora_b." in k for k in model_keys)
    assert optim_keys and all(".lora_a." in k or ".lora_b." in k for k in optim_keys)
    base, merged = load_state_dict(base_dir), load_state_dict(straight_w2 / "final")
    info = json.loads((straight_w2 / "final" / "adapter.json").read_text())
    ad = adapters(straight_w2)
    assert base.keys() == merged.keys()
    for k in base:
        module = k.removesuffix(".weight")
        if f"{module}.lora_a.weight" in ad:
            delta = info["scale"] * ad[f"{module}.lora_b.weight"] @ ad[f"{module}.lora_a.weight"]
            torch.testing.assert_close(merged[k], base[k] + delta, rtol=0, atol=1e-6, msg=k)
            assert not torch.equal(merged[k], base[k])
        else:  # embeddings, norms, untargeted linears: frozen, exported bit for bit
            assert torch.equal(merged[k], base[k]), k


def test_sigkill_resume_with_dropout_is_bitwise(setup):
    """Dropout draws random numbers each step, so this also checks the RNG state round-trip."""
    tmp, _, cfg = setup
    over = ["lora={rank: 4, alpha: 8, dropout: 0.1, targets: [all]}", "batch.micro_batch_size=2"]
    straight, killed = tmp / "drop_straight", tmp / "drop_killed"
    check(run_train(cfg, straight, nproc=2, overrides=over))
    proc = run_train(cfg, killed, nproc=2, overrides=over, fault="kill@6")
    assert proc.returncode != 0 and not (killed / "final").exists()
    proc = check(run_train(cfg, killed, nproc=2, overrides=[*over, "resume=auto"]))
    assert "at step 4" in proc.stdout
    assert rows(killed) == rows(straight)
    a, b = adapters(killed), adapters(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "final" / "model.safetensors").read_bytes() == (straight / "final" / "model.safetensors").read_bytes()


def test_qlora_sigkill_resume_is_bitwise(setup):
    """The NF4 base is requantised from the same file on resume: the same bits, so the resumed
    adapters are the uninterrupted run's."""
    tmp, _, cfg = setup
    over = ["lora={rank: 4, alpha: 8, dropout: 0.0, targets: [all], quantize_base: nf4}"]
    straight, killed = tmp / "q_straight", tmp / "q_killed"
    check(run_train(cfg, straight, nproc=1, overrides=over))
    assert run_train(cfg, killed, nproc=1, overrides=over, fault="kill@6").returncode != 0
    check(run_train(cfg, killed, nproc=1, overrides=[*over, "resume=auto"]))
    assert rows(killed) == rows(straight)
    a, b = adapters(killed), adapters(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FROZEN_PROBE = """
import sys, torch
from train.config import load_config
from train.distributed import init_distributed
from train.build import resolve_inputs, build_training
from data.loader import AlpacaLoader
from train.step import step_batches, train_step
from torch.distributed.tensor import DTensor
cfg = load_config(sys.argv[1], sys.argv[2:])
info = init_distributed()
inputs = resolve_inputs(cfg, info)
model, opt, sched = build_training(cfg, inputs.args, info, 4)
full = lambda t: (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()
before = {n: full(p) for n, p in model.named_parameters() if not p.requires_grad}
n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
assert n_train and all(p.requires_grad == ('lora_' in n) for n, p in model.named_parameters())
assert {id(p) for g in opt.param_groups for p in g['params']} == {id(p) for p in model.parameters() if p.requires_grad}
loader = AlpacaLoader(inputs.data, inputs.tokenizer, 2, info.rank, info.world_size, 0)
steps = step_batches(loader, 1, info.device, cfg.parallel.attention)
for _ in range(3):
    train_step(model, opt, sched, next(steps), 1.0)
after = {n: full(p) for n, p in model.named_parameters() if not p.requires_grad}
assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
dtypes = {str(p.dtype) for n, p in model.named_parameters() if not p.requires_grad}
if info.is_main:
    print('frozen', len(before), 'dtypes', sorted(dtypes), 'trainable', n_train)
torch.distributed.destroy_process_group()
"""


@pytest.mark.parametrize("policy", ["selective", "full"])
def test_frozen_base_is_bit_identical_after_steps_under_fsdp_bf16(setup, policy):
    """bf16 mixed precision on 2 ranks: the frozen base is stored in bf16, the adapters in fp32,
    sharded together; three updates later every frozen tensor is unchanged, bit for bit."""
    tmp, _, cfg = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp / "probe.py"), str(cfg), LORA, "parallel.mixed_precision=bf16",
           f"parallel.activation_checkpointing={policy}", "data.packing=true", "data.pack_len=64",
           f"output_dir={tmp / 'probe'}"]
    (tmp / "probe.py").write_text(FROZEN_PROBE)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dtypes ['torch.bfloat16']" in proc.stdout, proc.stdout


def test_compiled_packed_checkpointed_lora_trains_like_eager(setup):
    """torch.compile per layer + full activation checkpointing + packed rows (one process): the
    same losses as the eager, unpacked-attention-equivalent run to compile's rounding."""
    tmp, _, cfg = setup
    over = [LORA, "max_steps=3", "data.packing=true", "data.pack_len=64", "parallel.activation_checkpointing=full",
            "checkpoint.every=0", "checkpoint.export=false"]
    eager, compiled = tmp / "eager", tmp / "compiled"
    check(run_train(cfg, eager, nproc=1, overrides=over))
    check(run_train(cfg, compiled, nproc=1, overrides=[*over, "parallel.compile=true"], timeout=600))
    for a, b in zip(rows(eager), rows(compiled), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)


def test_resuming_onto_another_base_is_refused_in_one_line(setup, straight_w2):
    tmp, base_dir, cfg = setup
    out = tmp / "other_base"
    shutil.copytree(straight_w2, out)
    shutil.rmtree(out / "final")
    # Same path, other weights: what a re-converted or re-downloaded base looks like.
    other = tmp / "base_copy"
    shutil.copytree(base_dir, other)
    moved = tmp / "base_moved"
    base_dir.rename(moved)
    try:
        from model.tokenizer import load_tokenizer

        vocab = load_tokenizer(str(moved / "tokenizer.model")).vocab_size
        write_base(base_dir, str(moved / "tokenizer.model"), vocab, seed=2)
        proc = run_train(cfg, out, nproc=1, overrides=[LORA, "resume=auto"])
    finally:
        shutil.rmtree(base_dir)
        moved.rename(base_dir)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds adapters for the base" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,expected", [
    ("lora={targets: [wq, q_proj]}", "unknown target 'q_proj'"),
    ("lora={rank: 0}", "'lora.rank' must be >= 1"),
    ("lora={quantize_base: nf8}", "must be one of none, nf4"),
])
def test_bad_lora_config_names_the_key(setup, override, expected):
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(setup[2], [override])


def test_bad_lora_target_exits_2_in_one_line(setup):
    proc = run_train(setup[2], setup[0] / "bad", nproc=1, overrides=["lora={targets: [wq, q_proj]}"])
    assert proc.returncode == 2 and "unknown target 'q_proj' (did you mean 'wq'?)" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (SHARED / "gsm8k_alpaca.json").is_file(), reason="needs ../shared/data/gsm8k_alpaca.json")
def test_qlora_on_real_alpaca_data_lowers_the_loss_on_two_ranks(tmp_path):
    """NF4 base (LLaMA-2 tokenizer, GSM8K in Alpaca format), sharded over 2 ranks."""
    base = write_base(tmp_path / "base", str(SHARED / "llama2_tokenizer.model"), 32000, dim=128)
    cfg = {"seed": 0, "max_steps": 16, "model": {"init_from": str(base)},
           "data": {"paths": [str(SHARED / "gsm8k_alpaca.json")], "max_len": 128,
                    "cache_dir": str(tmp_path / "cache"), "num_proc": 1},
           "optim": {"lr": 1e-2, "warmup_ratio": 0.0, "schedule": "constant"},
           "batch": {"micro_batch_size": 4, "grad_accum": 1}, "parallel": {"mixed_precision": "fp32"},
           "log": {"every": 4, "tensorboard": False},
           "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["all"], "quantize_base": "nf4"}}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    check(run_train(tmp_path / "q.yaml", tmp_path / "out", nproc=2))
    losses = [r["loss"] for r in rows(tmp_path / "out")]
    # Step 1's loss is the base's (measured before the first update). A random base predicts
    # near-uniformly, so its loss is ~ln(32000) = 10.37 on every batch: a paired reference.
    assert losses[0] == pytest.approx(10.4, abs=0.15)
    assert sum(losses[-8:]) / 8 < losses[0] - 0.25, losses
    info = json.loads((tmp_path / "out" / "final" / "adapter.json").read_text())
    assert info["quantize_base"] == "nf4" and info["targets"] == ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
